"""The whole pipeline on one machine, wired from template.yaml.

- AWS: moto in server mode, in this process, with the template's bucket, table, topic, queues and secret.
- Functions: every AWS::Serverless::Function of the template, with its handler, environment and events.
- Providers: the WaveSpeed and CometAPI simulators on 127.0.0.1.
Only three things differ from a deployment, on purpose: AWS endpoints point at the embedded AWS, the API's public
URL (`https://<api>.execute-api...`) is the local API gateway's, and finalize's download allow-list
(`AllowedOutputHosts`) names the simulators' http://127.0.0.1 origins, which it would otherwise refuse.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from avatar_local.simulators.cometapi import CometApiSimulator
from avatar_local.simulators.fal import FalSimulator
from avatar_local.simulators.faults import FaultPlan
from avatar_local.simulators.wavespeed import WaveSpeedSimulator
from avatar_local.twin.aws import (
    OPERATOR,
    AwsClients,
    EmbeddedAws,
    RoleSession,
    create_resources,
    create_roles,
    rule_queue,
    secret_json,
    subscribe_queue,
)
from avatar_local.twin.aws_faults import AwsFaultPlan
from avatar_local.twin.otel_layer import OTEL_WRAPPER
from avatar_local.twin.runtime import FunctionPool, FunctionRuntime
from avatar_local.twin.sam_transform import transform
from avatar_local.twin.template import (
    FunctionSpec,
    Resolver,
    TemplateError,
    function_by_id,
    functions,
    layer_content_dirs,
    load_template,
)
from avatar_local.twin.triggers import (
    ApiGateway,
    ApiRoute,
    AsyncInvoker,
    SqsPoller,
    StreamPump,
    Worker,
    s3_notification_pump,
    scheduled_event,
)

logger = logging.getLogger("avatar_local")

ROOT = Path(__file__).resolve().parents[3]
LOCAL_API_ID = "localapi"
LOCAL_API_KEY = "local-simulator-key"


# The pipeline's events, as an app's rule names their source (the product's domain/events.py EVENT_SOURCE).
TASK_EVENTS_SOURCE = "org.avatar-pipeline.tasks"


class StackInfo(BaseModel):
    """What a client needs to use the running stack; written to .local/stack.json."""

    aws_endpoint_url: str
    region: str
    bucket: str
    table: str
    topic_arn: str
    webhook_base_url: str
    simulators: dict[str, str]
    notifications_queue_url: str
    # Where the task state change events arrive, through a rule on the default bus (as an app's would).
    events_queue_url: str | None = None
    async_failure_queue_url: str | None = None
    finalize_failure_queue_url: str | None = None


@dataclass
class LocalStackConfig:
    root: Path = ROOT
    stack_name: str = "avatar-local"
    region: str = "us-east-1"
    account_id: str = "123456789012"
    # Template parameter overrides: shorter waits than production so things happen in seconds, not minutes.
    parameters: dict[str, str] = field(
        default_factory=lambda: {
            "PollAfterSeconds": "30",
            "MaxPairWaitSeconds": "300",
            "MaxProviderQueueSeconds": "600",
            "MaxRenderSeconds": "600",
        }
    )
    poll_interval_seconds: float = 2.0
    faults: FaultPlan = field(default_factory=FaultPlan)
    aws_faults: AwsFaultPlan = field(default_factory=AwsFaultPlan)
    time_factor: float = 1.0
    # WaveSpeed's documented limits, for runs that need them (e.g. the burst benchmark): submissions per minute of
    # simulated time (None: no limit) and predictions processing at once.
    wavespeed_submissions_per_minute: int | None = None
    wavespeed_max_concurrent: int = 3
    state_dir: Path | None = None
    workers_per_function: int = 1
    # The embedded AWS authorises each function's requests with its role's policies, as IAM does.
    enforce_iam: bool = True
    # Another template than the project's (e.g. one with a permission taken away); code paths stay relative to root.
    template_path: Path | None = None

    @property
    def local_dir(self) -> Path:
        return self.state_dir or self.root / ".local"


class LocalStack:
    def __init__(self, config: LocalStackConfig | None = None) -> None:
        self.config = config or LocalStackConfig()
        self.template = load_template(self.config.template_path or self.config.root / "template.yaml")
        # What CloudFormation receives: the functions' roles and policies are read from here, as SAM generates them.
        self.transformed = transform(self.template, self.config.region)
        self.aws = EmbeddedAws(self.config.region, enforce_iam=self.config.enforce_iam)
        self.roles: dict[str, RoleSession] = {}  # each function's execution role session, by function
        self.simulator = WaveSpeedSimulator(
            faults=self.config.faults,
            time_factor=self.config.time_factor,
            max_concurrent=self.config.wavespeed_max_concurrent,
            submissions_per_minute=self.config.wavespeed_submissions_per_minute,
        )
        self.comet_simulator = CometApiSimulator(faults=self.config.faults, time_factor=self.config.time_factor)
        # fal's key list is https only: the simulator serves HTTPS with a CA of its own, which the functions trust.
        self.fal_simulator = FalSimulator(
            api_key=LOCAL_API_KEY, faults=self.config.faults, time_factor=self.config.time_factor, tls=True
        )
        self.pools: dict[str, FunctionPool] = {}
        self._workers: list[Worker] = []
        self._invokers: list[AsyncInvoker] = []
        self._stream_pumps: list[StreamPump] = []
        self._sqs_pollers: list[SqsPoller] = []
        self._gateway: ApiGateway | None = None
        self.info: StackInfo | None = None
        self.wired_events: list[tuple[str, str]] = []  # (function, event) pairs given a local source
        self.injected: Counter[str] = Counter()  # faults injected by the local event sources

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> StackInfo:
        config = self.config
        config.local_dir.mkdir(parents=True, exist_ok=True)
        (config.local_dir / "logs").mkdir(exist_ok=True)
        self.aws.start()
        self.simulator.start()
        self.comet_simulator.start()
        self.fal_simulator.start()
        assert self.fal_simulator.certificate_pem is not None
        self._fal_ca_file.write_bytes(self.fal_simulator.certificate_pem)
        resolver = Resolver(
            self.template,
            stack_name=config.stack_name,
            region=config.region,
            account_id=config.account_id,
            parameters={
                "WaveSpeedBaseUrl": self.simulator.base_url,
                "CometApiBaseUrl": self.comet_simulator.base_url,
                "FalBaseUrl": self.fal_simulator.base_url,
                "FalJwksUrl": f"{self.fal_simulator.base_url}/.well-known/jwks.json",
                # The simulators serve outputs on 127.0.0.1: trusted by origin, explicitly, since finalize otherwise
                # refuses them (https with a public CA, and public addresses only).
                "AllowedOutputHosts": ",".join(
                    sim.base_url for sim in (self.simulator, self.comet_simulator, self.fal_simulator)
                ),
                **config.parameters,
            },
            resource_values={"WebhookApi": LOCAL_API_ID},
        )
        secrets = {
            "WaveSpeedSecret": secret_json({"api_key": LOCAL_API_KEY}),
            "WaveSpeedWebhookSecret": secret_json({"webhook_secret": self.simulator.webhook_secret}),
            "CometApiSecret": secret_json({"api_key": LOCAL_API_KEY}),
            "FalSecret": secret_json({"api_key": LOCAL_API_KEY}),
        }
        created = create_resources(self.aws, self.template, resolver, config.stack_name, secrets)
        create_roles(self.aws, self.transformed, resolver, config.stack_name)
        specs = functions(self.template)
        for spec in specs:
            # What the template's references to a function give: its name (Ref) and ARN (Fn::GetAtt Arn).
            name = resolver.resolve_str(spec.properties.get("FunctionName", f"{config.stack_name}-{spec.logical_id}"))
            resolver.resource_values[spec.logical_id] = name
            resolver.attributes[(spec.logical_id, "Arn")] = (
                f"arn:aws:lambda:{config.region}:{config.account_id}:function:{name}"
            )
            role = self.transformed["Resources"][spec.logical_id]["Properties"]["Role"]
            role_arn = resolver.resolve_str(role, f"{spec.logical_id} Role")
            self.roles[spec.logical_id] = self.aws.assume_role(role_arn, f"{config.stack_name}-{spec.logical_id}")
        routes: list[ApiRoute] = []
        self._gateway = ApiGateway(routes)
        for spec in specs:
            self.pools[spec.logical_id] = FunctionPool(
                self._runtime(spec, resolver), workers=config.workers_per_function
            )
        for spec in specs:
            self._wire_events(spec, resolver, routes)
        self._wire_bucket_notifications(resolver, created.refs)
        self._gateway.start()
        for worker in self._workers:
            worker.start()
        self.info = self._describe(resolver, created.refs)
        (config.local_dir / "stack.json").write_text(self.info.model_dump_json(indent=2) + "\n")
        return self.info

    def stop(self) -> None:
        for worker in self._workers:
            worker.stop()
        for invoker in self._invokers:
            invoker.stop()
        for pump in self._stream_pumps:
            pump.stop()
        for poller in self._sqs_pollers:
            poller.stop()
        if self._gateway is not None:
            self._gateway.stop()
        for pool in self.pools.values():
            pool.stop()
        self.simulator.stop()
        self.comet_simulator.stop()
        self.fal_simulator.stop()
        self.aws.stop()

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def wait_until_warm(self, timeout: float = 120.0) -> None:
        """Until every function's workers have imported their handlers: runs that time the pipeline start warm, as a
        deployed stack under load is (a local worker starts far slower than a Lambda environment on a shared CPU)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(pool.warm for pool in self.pools.values()):
            time.sleep(0.1)

    def wait_until_quiet(self, timeout: float = 30.0) -> None:
        """Until no invocation is queued or running, and no queue read by an SQS event source has a message ready
        (tests use it to let the pipeline settle). Delayed messages, and messages waiting out a visibility timeout
        after a failure, do not count: waiting for them would mean waiting for the clock."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (
                not any(i.busy for i in self._invokers)
                and not any(p.busy for p in self._stream_pumps)
                and not any(p.busy for p in self._sqs_pollers)
            ):
                return
            time.sleep(0.1)

    @property
    def _fal_ca_file(self) -> Path:
        return self.config.local_dir / "fal-simulator-ca.pem"

    # --- wiring ------------------------------------------------------------------------------------------------
    def _runtime(self, spec: FunctionSpec, resolver: Resolver) -> FunctionRuntime:
        environment = {key: str(value) for key, value in spec.resolved_environment(resolver).items()}
        public_api = f"https://{LOCAL_API_ID}.execute-api.{self.config.region}.amazonaws.com"
        assert self._gateway is not None
        for key, value in environment.items():
            if value.startswith(public_api):
                environment[key] = self._gateway.base_url + value.removeprefix(public_api)
        environment |= {
            "AWS_ENDPOINT_URL": self.aws.endpoint_url,
            "AWS_REGION": self.config.region,
            "AWS_DEFAULT_REGION": self.config.region,
            **self.roles[spec.logical_id].credentials.environment(),
            "AWS_LAMBDA_FUNCTION_NAME": f"{self.config.stack_name}-{spec.logical_id}",
            "PYTHONDONTWRITEBYTECODE": "1",
            # The fal simulator's CA, trusted as Lambda trusts the public CAs (httpx reads it).
            "SSL_CERT_FILE": str(self._fal_ca_file),
        }
        code_paths = (
            str(self.config.root / spec.code_uri),
            *(str(self.config.root / path) for path in layer_content_dirs(self.template, spec, resolver)),
        )
        return FunctionRuntime(
            name=spec.logical_id,
            module=spec.module,
            attribute=spec.attribute,
            code_paths=code_paths,
            environment=environment,
            timeout_seconds=spec.timeout,
            memory_mb=spec.memory_size,
            log_path=str(self.config.local_dir / "logs" / f"{spec.logical_id}.log"),
            spans_path=str(self.config.local_dir / "traces" / f"{spec.logical_id}.jsonl")
            if environment.get("AWS_LAMBDA_EXEC_WRAPPER") == OTEL_WRAPPER
            else None,
            faults=self.config.aws_faults,
        )

    def _failure_destination(self, spec: FunctionSpec, resolver: Resolver) -> tuple[int, str | None]:
        invoke_config = spec.properties.get("EventInvokeConfig", {})
        retries = int(invoke_config.get("MaximumRetryAttempts", 2))
        destination = invoke_config.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
        return retries, self._queue_url_for(resolver.resolve(destination)) if destination else None

    def _queue_url_for(self, queue_arn: str) -> str:
        return self.aws.client("sqs").get_queue_url(QueueName=queue_arn.rsplit(":", 1)[-1])["QueueUrl"]

    def _wire_events(self, spec: FunctionSpec, resolver: Resolver, routes: list[ApiRoute]) -> None:
        pool = self.pools[spec.logical_id]
        # Lambda reads a function's streams and queues, and sends its failures on, with the function's role.
        role: AwsClients = self.roles[spec.logical_id]
        for event in spec.events:
            props = event.properties
            if event.type == "S3":
                continue  # SAM makes it the bucket's notification: wired from there (_wire_bucket_notifications)
            elif event.type == "Api":
                # Every stage the deployment creates answers, as on AWS.
                for stage in api_stage_names(self.transformed, props["RestApiId"]["Ref"]):
                    routes.append(ApiRoute(stage, props["Path"], props["Method"], pool))
            elif event.type in ("Schedule", "ScheduleV2"):
                retries, destination = self._failure_destination(spec, resolver)
                invoker = AsyncInvoker(pool, role, retries, destination)
                self._invokers.append(invoker)
                rule = f"{self.config.stack_name}-{spec.logical_id}-{event.name}"

                def tick(invoker: AsyncInvoker = invoker, rule: str = rule) -> None:
                    if not invoker.busy:  # one poll at a time is enough locally
                        invoker.submit(scheduled_event(rule, self.config.region))

                self._workers.append(Worker(f"schedule-{spec.logical_id}", tick, self.config.poll_interval_seconds))
            elif event.type == "DynamoDB":
                stream_arn = resolver.resolve(props["Stream"])
                destination = props.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
                pump = StreamPump(
                    role,
                    stream_arn,
                    pool,
                    batch_size=int(props.get("BatchSize", 100)),
                    max_retries=int(props.get("MaximumRetryAttempts", 3)),
                    filters=[json.loads(f["Pattern"]) for f in props.get("FilterCriteria", {}).get("Filters", [])],
                    failure_queue_url=self._queue_url_for(resolver.resolve(destination)) if destination else None,
                    report_item_failures="ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
                    parallelization=int(props.get("ParallelizationFactor", 1)),
                )
                self._stream_pumps.append(pump)
                self._workers.append(Worker(f"stream-{spec.logical_id}", pump.step, 0.2))
            elif event.type == "SQS":
                queue_arn = resolver.resolve_str(props["Queue"], f"{spec.logical_id} event {event.name} Queue")
                scaling = resolver.resolve(props.get("ScalingConfig", {}))
                poller = SqsPoller(
                    role,
                    queue_arn,
                    self._queue_url_for(queue_arn),
                    pool,
                    batch_size=int(resolver.resolve(props.get("BatchSize", 10))),
                    batching_window_seconds=float(resolver.resolve(props.get("MaximumBatchingWindowInSeconds", 0))),
                    report_item_failures="ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
                    filters=event.filter_patterns(),
                    max_concurrency=int(scaling["MaximumConcurrency"]) if "MaximumConcurrency" in scaling else None,
                )
                # A disabled mapping exists but does not poll.
                if str(resolver.resolve(props.get("Enabled", True))).lower() != "false":
                    self._sqs_pollers.append(poller)
                    self._workers.append(Worker(f"sqs-{spec.logical_id}-{event.name}", poller.step, 0.2))
                else:
                    poller.stop()
            else:
                raise NotImplementedError(f"{spec.logical_id}: no local source for {event.type} events")
            self.wired_events.append((spec.logical_id, event.name))

    def _wire_bucket_notifications(self, resolver: Resolver, refs: dict[str, str]) -> None:
        """Each bucket's Lambda notifications, read from the transformed template (where SAM puts its S3 events), go
        to their function; as on AWS, only if the function's resource policy lets this bucket's S3 invoke it."""
        arns = {resolver.attributes[(spec, "Arn")]: spec for spec in self.pools}
        for logical_id, resource in self.transformed["Resources"].items():
            if resource["Type"] != "AWS::S3::Bucket" or logical_id not in refs:
                continue
            bucket = refs[logical_id]
            configuration = resolver.resolve(resource["Properties"].get("NotificationConfiguration", {}))
            for number, notification in enumerate(configuration.get("LambdaConfigurations", [])):
                function = arns[notification["Function"]]
                require_invoke_permission(
                    self.transformed, resolver, function, "s3.amazonaws.com", f"arn:aws:s3:::{bucket}"
                )
                spec = function_by_id(self.template, function)
                retries, destination = self._failure_destination(spec, resolver)
                invoker = AsyncInvoker(self.pools[function], self.roles[function], retries, destination)
                self._invokers.append(invoker)
                queue_url = self._route_bucket_events(bucket, f"{function}-{number}", notification)
                pump = s3_notification_pump(self.aws, queue_url, invoker, self.config.aws_faults, self.injected)
                self._workers.append(Worker(f"s3-{function}-{number}", pump, 0.0))
                self.wired_events.append((function, f"{logical_id} notification {number}"))

    def _route_bucket_events(self, bucket: str, name: str, notification: dict[str, Any]) -> str:
        """The bucket's notification, delivered by moto to a queue the pump reads."""
        sqs = self.aws.client("sqs")
        queue_url = sqs.create_queue(QueueName=f"{self.config.stack_name}-{name}")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        configuration: dict[str, Any] = {"QueueArn": queue_arn, "Events": [notification["Event"]]}
        if "Filter" in notification:
            configuration["Filter"] = {"Key": {"FilterRules": notification["Filter"]["S3Key"]["Rules"]}}
        s3 = self.aws.client("s3")
        existing = s3.get_bucket_notification_configuration(Bucket=bucket).get("QueueConfigurations", [])
        s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [*existing, configuration]}
        )
        return queue_url

    def _describe(self, resolver: Resolver, refs: dict[str, str]) -> StackInfo:
        # Only the outputs a client of the local stack uses: others (the dashboard's name and URL) name resources that
        # have no local counterpart.
        outputs = {
            name: resolver.resolve(output["Value"])
            for name, output in self.template.get("Outputs", {}).items()
            if name in _CLIENT_OUTPUTS
        }
        assert self._gateway is not None
        public_api = f"https://{LOCAL_API_ID}.execute-api.{self.config.region}.amazonaws.com"
        return StackInfo(
            aws_endpoint_url=self.aws.endpoint_url,
            region=self.config.region,
            bucket=outputs["MediaBucketName"],
            table=outputs["TaskTableName"],
            topic_arn=outputs["NotificationTopicArn"],
            webhook_base_url=outputs["WebhookBaseUrl"].replace(public_api, self._gateway.base_url),
            simulators={
                "wavespeed": self.simulator.base_url,
                "cometapi": self.comet_simulator.base_url,
                "fal": self.fal_simulator.base_url,
            },
            notifications_queue_url=subscribe_queue(
                self.aws, outputs["NotificationTopicArn"], f"{self.config.stack_name}-notifications"
            ),
            events_queue_url=rule_queue(self.aws, TASK_EVENTS_SOURCE, f"{self.config.stack_name}-task-events"),
            async_failure_queue_url=outputs.get("AsyncFailureQueueUrl"),
            finalize_failure_queue_url=outputs.get("FinalizeFailureQueueUrl"),
        )


def api_stage_names(transformed: dict[str, Any], api: str) -> list[str]:
    """Every stage a REST API of the transformed template is deployed to: its Stage resources, and the stage a
    Deployment names itself (which SAM adds, as "Stage", unless the API sets OpenApiVersion)."""
    names = set()
    for resource in transformed["Resources"].values():
        props = resource.get("Properties", {})
        is_stage = resource["Type"] in ("AWS::ApiGateway::Stage", "AWS::ApiGateway::Deployment")
        if is_stage and props.get("RestApiId") == {"Ref": api} and isinstance(props.get("StageName"), str):
            names.add(props["StageName"])
    return sorted(names)


def require_invoke_permission(
    transformed: dict[str, Any], resolver: Resolver, function: str, principal: str, source_arn: str
) -> None:
    """An AWS::Lambda::Permission lets `principal` invoke `function` from `source_arn` (SourceArn, when set, must match
    it; SourceAccount, when set, must be the account). Otherwise AWS refuses the notification when it is created."""
    for resource in transformed["Resources"].values():
        if resource["Type"] != "AWS::Lambda::Permission":
            continue
        props = resolver.resolve(resource["Properties"])
        if (
            props.get("FunctionName") in (resolver.resource_values[function], resolver.attributes[(function, "Arn")])
            and props.get("Principal") == principal
            and props.get("Action") in ("lambda:InvokeFunction", "lambda:*")
            and fnmatch.fnmatchcase(source_arn, props.get("SourceArn", "*"))
            and props.get("SourceAccount", resolver.account_id) == resolver.account_id
        ):
            return
    raise TemplateError(
        f"Unable to validate the destination configuration: {principal} may not invoke {function} "
        f"from {source_arn} (no AWS::Lambda::Permission allows it)"
    )


_CLIENT_OUTPUTS = frozenset(
    {
        "MediaBucketName",
        "TaskTableName",
        "NotificationTopicArn",
        "WebhookBaseUrl",
        "AsyncFailureQueueUrl",
        "FinalizeFailureQueueUrl",
    }
)


def environment_for_clients(info: StackInfo) -> dict[str, str]:
    """Environment variables that point AWS SDKs and the CLI at the local stack."""
    return {
        "AWS_ENDPOINT_URL": info.aws_endpoint_url,
        "AWS_REGION": info.region,
        "AWS_DEFAULT_REGION": info.region,
        # The operator's key: the embedded AWS's root user. Never real credentials, which it would refuse anyway.
        **OPERATOR.environment(),
    }
