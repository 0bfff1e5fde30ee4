"""Where the matrix's tasks run: this process, a pool of spawned processes, or Ray tasks."""

from __future__ import annotations

import os

from seg2tflite.errors import UserError, one_line

TASK_RETRIES = 3  # Ray (and the process pool) run a task again when its worker dies


def open_runner(ray: str | None, workers: int):
    if ray:
        return RayRunner(ray)
    return PoolRunner(workers) if workers > 1 else InlineRunner()


class InlineRunner:
    """Every task in this process, one after the other (the sequential reference)."""

    name = "this process"

    def map(self, fn, args: list[tuple], kind: str) -> list:
        return [fn(*a) for a in args]

    def close(self) -> None:
        pass


class PoolRunner:
    """Tasks in ``workers`` spawned processes; the tasks of a pool whose worker died run again in a fresh pool."""

    def __init__(self, workers: int):
        self.workers = workers
        self.name = f"a pool of {workers} processes"

    def map(self, fn, args: list[tuple], kind: str) -> list:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        results: dict[int, object] = {}
        for attempt in range(TASK_RETRIES + 1):
            todo = [i for i in range(len(args)) if i not in results]
            if not todo:
                break
            with ProcessPoolExecutor(min(self.workers, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {i: pool.submit(fn, *args[i]) for i in todo}
                for i, future in futures.items():
                    try:
                        results[i] = future.result()
                    except BrokenProcessPool:
                        if attempt == TASK_RETRIES:
                            raise UserError(
                                f"matrix: a {kind} worker died {TASK_RETRIES + 1} times; rerun with --workers 1"
                            ) from None
        return [results[i] for i in range(len(args))]

    def close(self) -> None:
        pass


class RayRunner:
    """Tasks on Ray: ``local`` starts Ray on this machine's cores, anything else is a cluster address."""

    def __init__(self, address: str):
        try:
            import ray
        except ImportError:
            raise UserError('--ray: Ray is not installed; pip install "seg2tflite[ray]" (plain ray, not ray[default])') from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            settings = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            try:
                if address == "local":
                    ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=200 * 2**20, **settings)
                else:
                    ray.init(address=address, **settings)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise UserError(f"--ray {address}: cannot join Ray ({one_line(e)}); start it with `ray start --head`") from None
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.name = f"Ray ({address}, {len(nodes)} node{'s' * (len(nodes) != 1)})"

    def map(self, fn, args: list[tuple], kind: str) -> list:
        if not args:
            return []
        remote = self.ray.remote(num_cpus=1, max_retries=TASK_RETRIES, scheduling_strategy="SPREAD")(fn)
        return self.ray.get([remote.remote(*a) for a in args])

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
