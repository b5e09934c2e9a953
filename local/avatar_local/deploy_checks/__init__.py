"""Checks before a deploy: what `sam build` produced (`build_check`, `make check-build`, with `build_probe` run in a
fresh interpreter) and the template created as a stack in moto's CloudFormation (`rehearsal`, `make rehearse`)."""
