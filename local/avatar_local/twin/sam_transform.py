"""template.yaml as CloudFormation receives it: the AWS SAM transform, run by the same library `sam deploy` uses.

The local stack reads what SAM generates (each function's execution role and its policies, the API's stages, the
event source mappings and permissions) from here instead of re-deriving SAM's rules, so a policy template or a
default that SAM expands differently from what we assumed shows up locally as it would on AWS.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any, Final

import boto3
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

__all__ = ["ARTIFACT_BUCKET", "transform"]

# `sam package` replaces each local CodeUri/ContentUri with the S3 location it uploaded the code to; the transform
# only checks the form, so a placeholder bucket stands in for the deployment's artifact bucket.
ARTIFACT_BUCKET: Final = "local-artifacts"
_CODE_PROPERTIES: Final = ("CodeUri", "ContentUri")


def transform(template: Mapping[str, Any], region: str) -> dict[str, Any]:
    """The CloudFormation template SAM makes of `template` (a decoded template.yaml) for a stack in `region`.

    Intrinsic functions are left as they are, as in the template CloudFormation receives: resolve them with
    :class:`avatar_local.twin.template.Resolver`. Managed policies are named by ARN in template.yaml, so the transform
    never has to look up a managed policy by name (which would need IAM).
    """
    packaged = copy.deepcopy(dict(template))
    for resource in packaged.get("Resources", {}).values():
        properties = resource.get("Properties", {})
        for key in _CODE_PROPERTIES:
            if isinstance(properties.get(key), str):
                properties[key] = f"s3://{ARTIFACT_BUCKET}/{properties[key].strip('/')}"
    # The translator warns about its own feature toggles and unpublished metrics: SAM's internals, not our template's.
    logging.getLogger("samtranslator").setLevel(logging.ERROR)
    translator = Translator(None, Parser(), boto_session=boto3.Session(region_name=region))
    transformed: dict[str, Any] = translator.translate(
        packaged, parameter_values={}, get_managed_policy_map=_no_managed_policy_lookup
    )
    return transformed


def _no_managed_policy_lookup() -> dict[str, str]:
    return {}
