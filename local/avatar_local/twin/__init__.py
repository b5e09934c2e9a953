"""The local twin of AWS: template.yaml run on this machine.

Embedded AWS (moto in server mode, with the patches that make it faithful: DynamoDB's writes, S3's limits, IAM
enforced), the template read and transformed as SAM does, each function in worker processes of its own, the event
sources that invoke them (S3 notifications, API, schedule, stream, queue, with their filters), and the AWS-side faults
the chaos run injects. `stack.LocalStack` puts it together with the provider simulators (`avatar_local.simulators`).
"""
