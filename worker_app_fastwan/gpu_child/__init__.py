"""The GPU child process, the only one that imports torch: generation holds the GIL and the GPU for seconds at a
time, and in a process of its own it cannot starve the parent's event loop (HTTP, heartbeats, uploads).

- `handle.GpuChild`: the parent's handle; starts, runs jobs in, cancels, kills and restarts the child, with
  an explicit state (`ChildState`) and an awaitable `wait_ready()`.
- `process.ChildProcess`: one spawned process and its pipe (what a test replaces with a fake).
- `main`: the child's own loop (load the model, then one job per message).
- `messages`: what the two sides send each other.
"""
