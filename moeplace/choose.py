"""Which quant of a Hub repository to download for this machine: every GGUF quant's header, planned and ranked.

The repository is listed once (``huggingface_hub``), shards of a split model are grouped under their first
one, every quant's header is read with range requests (in parallel threads: the wait is the network's) or from
the cache, and each is planned with the same solver as ``moeplace solve``. Quants that fit are ranked by the
workload's predicted time per generated token; those that do not fit follow, smallest first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from moeplace.configure import choose_config
from moeplace.emit.args import RunSettings, build_args
from moeplace.errors import MoeplaceError
from moeplace.gguf_file import SPLIT_PATTERN
from moeplace.hardware import Device
from moeplace.memory import RunConfig
from moeplace.model import ModelDescription, describe
from moeplace.placement import HOST
from moeplace.planner import Plan, Workload
from moeplace.remote import (
    HfRef,
    ReadStats,
    RepoFile,
    is_cached,
    is_model_file,
    list_gguf,
    quant_label,
    read_remote,
)
from moeplace.sizes import format_size
from moeplace.targets.builds import EngineBuild

READ_THREADS = 8


@dataclass(frozen=True)
class Quant:
    """One quant of a repository: its label, the first shard's path and every file's path."""

    label: str
    first: str
    files: tuple[str, ...]
    size: int

    def include(self) -> str:
        """The --include pattern that downloads exactly this quant's files."""
        if len(self.files) == 1:
            return self.files[0]
        m = SPLIT_PATTERN.match(self.first)
        assert m is not None
        return f"{m.group('prefix')}-*-of-{m.group('count')}.gguf"


@dataclass(frozen=True)
class Choice:
    """A quant planned for the machine; ``plan`` is None when it does not fit (``problem`` says why)."""

    quant: Quant
    repo: str
    model: ModelDescription | None
    plan: Plan | None
    command: str
    problem: str = ""

    @property
    def fits(self) -> bool:
        """Fits the GPUs and RAM: a plan that pages weights from disk through mmap runs, but does not fit."""
        return self.plan is not None and self.plan.chosen.fits and self.plan.chosen.estimate.host.fits

    @property
    def download(self) -> str:
        return f"hf download {self.repo} --include '{self.quant.include()}'"


def group_quants(files: list[RepoFile]) -> list[Quant]:
    """The repository's model GGUFs, split shards grouped under their first shard."""
    groups: dict[str, list[RepoFile]] = {}
    for f in files:
        if not is_model_file(f.path):
            continue
        folder, _, name = f.path.rpartition("/")
        m = SPLIT_PATTERN.match(name)
        key = f"{folder}/{m.group('prefix')}" if m else f.path
        groups.setdefault(key, []).append(f)
    out = []
    for members in groups.values():
        paths = sorted(f.path for f in members)
        out.append(Quant(quant_label(paths[0]), paths[0], tuple(paths), sum(f.size for f in members)))
    return sorted(out, key=lambda q: q.size)


def read_quants(repo: str, quants: list[Quant], listing: list[RepoFile], revision: str = "main",
                stats: ReadStats | None = None) -> dict[str, ModelDescription | MoeplaceError]:
    """Every quant's model description (or the error that stopped it), keyed by first shard."""
    stats = stats if stats is not None else ReadStats()

    def one(q: Quant) -> ModelDescription | MoeplaceError:
        try:
            return describe(read_remote(HfRef(repo, q.first, revision=revision), stats, listing))
        except MoeplaceError as e:
            return e

    # Threads overlap network waits; headers that are all in the cache only need the CPU, which threads would share.
    if all(is_cached(f.sha256) for f in listing if is_model_file(f.path)):
        return {q.first: one(q) for q in quants}
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        return dict(zip([q.first for q in quants], pool.map(one, quants)))


def command_line(p: Plan, threads: int | None = None, build: EngineBuild | None = None) -> str:
    """The llama-server line of a plan (the model fetched by llama.cpp itself: -hf/-hff or -mu), with the run
    configuration the plan was made for, as ``moeplace solve`` writes it."""
    settings = RunSettings.of(p.cfg, p.model.paths[0], p.estimate.context.n_ctx,
                              [n for n in p.devices if n != HOST], threads)
    return build_args(p.model, p.chosen.placement, settings, build).shell_line("llama-server")


def rank(repo: str, devices: Mapping[str, Device], config: Callable[[ModelDescription], RunConfig], *,
         workload: Workload, margin: int, revision: str = "main", stats: ReadStats | None = None,
         pinned: Sequence[str] = (), threads: int | None = None, build: EngineBuild | None = None) -> list[Choice]:
    """Every quant of ``repo`` planned for ``devices`` with its run configuration chosen as ``moeplace solve``
    chooses it (``pinned``: the settings the user gave); ``config`` gives the run config for a model (it checks
    the context options against the model). Fitting quants first, fastest first; then the rest, smallest first."""
    listing = list_gguf(repo, revision)
    quants = group_quants(listing)
    if not quants:
        raise MoeplaceError(f"{repo}: the repository holds no GGUF model file")
    models = read_quants(repo, quants, listing, revision, stats)
    choices = []
    for q in quants:
        md = models[q.first]
        if isinstance(md, MoeplaceError):
            choices.append(Choice(q, repo, None, None, "", f"unreadable: {md}"))
            continue
        try:
            cfg = config(md)
            p = choose_config(md, devices, cfg, pinned=pinned, workload=workload, margin=margin,
                              with_baselines=False).plan
        except MoeplaceError as e:
            choices.append(Choice(q, repo, md, None, "", str(e)))
            continue
        host = p.chosen.estimate.host
        problem = ("does not fit the GPUs" if not p.chosen.fits else
                   "" if host.fits else f"RAM short by {format_size(host.paged)}: paged from disk")
        choices.append(Choice(q, repo, md, p, command_line(p, threads, build), problem))
    return sorted(choices, key=lambda c: (not c.fits, c.plan.chosen.seconds if c.fits and c.plan else c.quant.size))
