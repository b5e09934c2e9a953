"""Development tooling around the pipeline; none of it is deployed.

- `__main__` (``python -m avatar_local demo|up|chaos|batch``), `chaos`, `batch`: the runs through the local stack;
- `twin`: the local twin of AWS that runs template.yaml (embedded AWS, the functions, their event sources);
- `simulators`: the providers' stand-ins (WaveSpeed, CometAPI), their fault plans, and the sample media;
- `bench`: the benchmark (``python -m avatar_local.bench``, `make bench`);
- `deploy_checks`: the checks before a deploy (`make check-build`, `make rehearse`).
"""
