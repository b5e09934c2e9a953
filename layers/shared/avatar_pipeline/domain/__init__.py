"""The domain: the task record and its rules, pairing and input checks, prices and quotas, errors. Pure Python: no
AWS, no HTTP (the providers' facts come from `avatar_pipeline.providers`)."""
