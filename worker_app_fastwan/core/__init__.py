"""What every layer shares and that imports nothing else of the worker: settings, the job and wire types,
errors and exit codes, logs, metrics, durable writes, devices, job progress, the environment of child processes."""
