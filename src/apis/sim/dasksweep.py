"""Sweep cases on a Dask distributed cluster: `apis sim --sweep ... --scheduler tcp://HOST:PORT`.

For a sweep bigger than one machine: every case is one task on the user's Dask cluster (its
scheduler and workers started with `dask scheduler` and `dask worker tcp://HOST:PORT`, each
worker with this package installed at the same version). A worker runs its case into a
temporary folder of its own and sends back the summary, the wall-clock figures and the
files' bytes; this process writes them into the case's folder, so the workers need no
shared disk. A worker that dies mid-case has its case run again on another by the
scheduler itself (`distributed.scheduler.allowed-failures`, 3 by default). Every case is
deterministic, so the files are the same as in a serial sweep (run-info.json's wall-clock
figures aside).

A case that fails with an error stops the sweep: the other cases are cancelled and the error
raised with the case's label, as in the local sweep.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apis.config.errors import ConfigError
from apis.sim.community import SimError, SimSettings

if TYPE_CHECKING:
    from apis.sim.simulate import PhaseProgress
    from apis.sim.sweep import SweepCase, _Case

CONNECT_TIMEOUT_S = 30.0


def check_scheduler(address: str) -> None:
    scheme, sep, rest = address.partition("://")
    if scheme not in ("tcp", "tls") or not sep or not rest:
        raise SimError(
            f"--scheduler = {address!r} (must be a Dask scheduler address such as "
            "tcp://10.0.0.5:8786)"
        )


def run_case(settings: SimSettings) -> tuple[bool, Any]:
    """One case on a worker: (True, (summary, run_info, [(relative path, bytes), ...])),
    or (False, message) when the settings cannot run (the sweep reports it as such)."""
    from apis.sim.simulate import simulate

    with tempfile.TemporaryDirectory(prefix="apis-sim-case-") as scratch:
        folder = Path(scratch) / "case"
        tempfile_dir = tempfile.tempdir
        tempfile.tempdir = scratch  # the community's temporary files go with it
        try:
            outcome = simulate(settings, folder, None)
        except (SimError, ConfigError) as error:
            return False, str(error)
        finally:
            tempfile.tempdir = tempfile_dir
        files = [(str(path.relative_to(folder)), path.read_bytes()) for path in outcome.files]
        return True, (outcome.summary, outcome.run_info, files)


def run_on_dask(
    cases: Sequence[_Case], scheduler: str, progress: PhaseProgress | None
) -> list[SweepCase]:
    """Every case as a task on the cluster at `scheduler`; the outcomes in the cases' order."""
    from distributed import Client, as_completed

    from apis.sim.sweep import SweepCase

    check_scheduler(scheduler)
    try:
        client = Client(  # type: ignore[no-untyped-call]
            scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False
        )
    except (OSError, TimeoutError) as error:
        raise SimError(f"--scheduler = {scheduler!r}: cannot connect ({error})") from None
    sweep_id = uuid.uuid4().hex[:8]
    done: dict[int, SweepCase] = {}
    with client:
        futures = {
            client.submit(run_case, case.settings, key=f"apis-sim-{sweep_id}-{case.index}",
                          pure=False): case
            for case in cases
        }
        try:
            for future in as_completed(  # type: ignore[no-untyped-call]
                list(futures), loop=client.loop
            ):
                case = futures[future]
                ok, answer = future.result()
                if not ok:
                    raise SimError(f"sweep case {case.label}: {answer}")
                summary, run_info, files = answer
                done[case.index] = SweepCase(
                    case.value, summary, run_info, _write(case.folder, files)
                )
                if progress is not None:
                    progress(f"{case.label} done", len(done), len(cases))
        except BaseException as error:
            client.cancel(list(futures), force=True)  # type: ignore[no-untyped-call]
            if not isinstance(error, (SimError, KeyboardInterrupt)):
                error.add_note(f"in a sweep case on the Dask cluster at {scheduler}")
            raise
    return [done[case.index] for case in cases]


def _write(folder: Path, files: list[tuple[str, bytes]]) -> list[Path]:
    shutil.rmtree(folder, ignore_errors=True)
    written = []
    for name, content in files:
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise SimError(f"a worker sent a file named {name!r} (not inside the case folder)")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    return written
