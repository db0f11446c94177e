"""A bakeoff suite: `manifest.toml` plus `tasks/<id>/crate/` (what the
model sees) and `tasks/<id>/fix/` (the reference fix, never shown to it).

The suites that ship with the package (`reflex_patchloop_v1`) are resources
of this package, under `suites/`, read with importlib.resources; a suite is
only ever read, and cargo builds a real copy of a task (`copy_crate`).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

# The suites shipped in the wheel, searched after $SPECKIT_SUITES_DIR.
PACKAGED_SUITES: Traversable = files("speckit_reflex.bakeoff").joinpath("suites")

_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class SuiteError(ValueError):
    """The suite cannot be found or its manifest is not usable."""


@dataclass(frozen=True)
class SuiteTask:
    id: str
    category: str
    difficulty: str
    description: str
    entry: str
    machine_applicable: bool
    crate_dir: Traversable
    fix_dir: Traversable


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    description: str
    root: Traversable
    tasks: tuple[SuiteTask, ...]

    @property
    def categories(self) -> list[str]:
        return sorted({t.category for t in self.tasks})

    def select(self, limit: int = 0, category: str = "") -> list[SuiteTask]:
        """Tasks in manifest order, optionally of one category, at most `limit` (0 = all)."""
        if category and category not in self.categories:
            raise SuiteError(
                f"suite {self.name} has no category {category!r}; it has: {', '.join(self.categories)}"
            )
        chosen = [t for t in self.tasks if not category or t.category == category]
        return chosen[:limit] if limit > 0 else chosen


# Where `speckit reflex harvest` writes a suite by default (relative to the
# working directory), so a harvested suite runs by its name.
HARVESTED_SUITES = Path(".speckit") / "suites"


def suite_search_path() -> list[Traversable]:
    """Folders searched for a suite by name, first match wins: $SPECKIT_SUITES_DIR,
    .speckit/suites (harvest's default), then the suites shipped in the package."""
    roots: list[Traversable] = []
    if os.environ.get("SPECKIT_SUITES_DIR"):
        roots.append(Path(os.environ["SPECKIT_SUITES_DIR"]))
    roots.append(HARVESTED_SUITES.resolve())
    roots.append(PACKAGED_SUITES)
    return roots


def find_suite(name_or_path: str) -> Traversable:
    """A suite folder from a name (`reflex_patchloop_v1`) or a path to one."""
    direct = Path(name_or_path)
    if (direct / "manifest.toml").is_file():
        return direct.resolve()
    searched = suite_search_path()
    for root in searched:
        if root.joinpath(name_or_path, "manifest.toml").is_file():
            return root.joinpath(name_or_path)
    raise SuiteError(
        f"suite {name_or_path!r} not found (looked in {', '.join(str(r) for r in searched)}; "
        "set SPECKIT_SUITES_DIR, or pass a folder: --suite-dir DIR)"
    )


def load_suite(folder: Traversable) -> Suite:
    """Read a suite's manifest; every listed task must have its crate/ folder."""
    manifest = folder.joinpath("manifest.toml")
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SuiteError(f"{manifest}: {exc}") from None
    head = data.get("suite", {})
    tasks: list[SuiteTask] = []
    for i, t in enumerate(data.get("task", [])):
        try:
            tid = str(t["id"])
            if not _TASK_ID.fullmatch(tid):
                # A folder name under tasks/, never a path (a suite may come from anyone).
                raise SuiteError(
                    f"{manifest}: task #{i + 1}: id {tid[:100]!r} is not a folder name "
                    "(letters, digits, '_', '-', '.'; not starting with '.')"
                )
            task = SuiteTask(
                id=tid,
                category=str(t["category"]),
                difficulty=str(t["difficulty"]),
                description=str(t.get("description", "")),
                entry=str(t.get("entry", "src/lib.rs")),
                machine_applicable=bool(t.get("machine_applicable", False)),
                crate_dir=folder.joinpath("tasks", tid, "crate"),
                fix_dir=folder.joinpath("tasks", tid, "fix"),
            )
        except KeyError as exc:
            raise SuiteError(f"{manifest}: task #{i + 1} lacks {exc.args[0]!r}") from None
        _refuse_links(folder, tid)
        if not task.crate_dir.joinpath("Cargo.toml").is_file():
            raise SuiteError(f"{manifest}: task {tid}: {task.crate_dir}/Cargo.toml not found")
        tasks.append(task)
    if not tasks:
        raise SuiteError(f"{manifest}: no [[task]] entries")
    return Suite(
        name=str(head.get("name", folder.name)),
        version=int(head.get("version", 1)),
        description=str(head.get("description", "")),
        root=folder,
        tasks=tuple(tasks),
    )


def _refuse_links(folder: Traversable, tid: str) -> None:
    """SuiteError naming the first symbolic link of a task's crate/ or fix/
    (itself included): a suite may come from anyone, and a link would copy a
    file of the host into the crate PatchLoop builds and shows to a model."""
    if not isinstance(folder, Path):
        return  # a package resource: the shipped suites hold no links
    task = folder / "tasks" / tid
    for top in (task / "crate", task / "fix"):
        if top.is_symlink():
            raise SuiteError(f"{folder}: tasks/{tid}/{top.name}: a symbolic link, not followed")
        for dirpath, dirnames, filenames in os.walk(top):
            for name in (*dirnames, *filenames):
                path = Path(dirpath, name)
                if path.is_symlink():
                    rel = path.relative_to(folder).as_posix()
                    raise SuiteError(f"{folder}: {rel}: a symbolic link, not followed")


def copy_crate(task: SuiteTask, dest: Path) -> Path:
    """A fresh copy of the task's broken crate (never its fix) at `dest`."""
    return copy_tree(task.crate_dir, dest)


def copy_tree(src: Traversable, dest: Path, skip: frozenset[str] = frozenset({"target"})) -> Path:
    """The files under `src` (a package resource folder, or any path) written
    into the real folder `dest`, which cargo can build, leaving out folders
    named in `skip` (build output). Existing files under `dest` are replaced.

    Fresh files, not copies with their times: fresh mtimes keep cargo from
    reusing artifacts that an earlier run built from a fixed copy of the same
    package.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        if entry.is_dir():
            if entry.name not in skip:
                copy_tree(entry, dest / entry.name, skip)
        else:
            (dest / entry.name).write_bytes(entry.read_bytes())
    return dest
