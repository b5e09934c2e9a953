"""fal.ai: talking-avatar models on fal's queue API (Kling AI Avatar v2, OmniHuman v1.5, InfiniTalk).

The adapter is `providers.fal.adapter.FalProvider`; webhook signatures are checked by `providers.fal.webhooks`. The
spec (settings, models, prices, `build`) is not written yet: fal is not registered in `providers.registry`.
"""
