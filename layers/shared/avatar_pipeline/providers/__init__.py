"""The video providers: one folder each, holding its spec (`SPEC`: models, prices, limits, settings) and its adapter
(`adapter.py`, the HTTP client); `registry` lists them."""
