"""ACE playbook data model: bullets, sections, and the delta operations that change them.

ACE (Zhang et al., "Agentic Context Engineering", ICLR 2026) keeps an agent's learned strategies
as itemized *bullets* in the context and changes them only through small *deltas*, never a full
rewrite (which collapses the context). Here a delta is a list of typed ops:

    ADD     new bullet in a section            UPDATE  new content for one bullet
    MERGE   ids -> one bullet, counters summed REMOVE  drop one bullet
    TAG     helpful / harmful / neutral counter +count

plus the internal RESTORE op (a verbatim bullet snapshot) that rollback and import use. Ops are
applied by deterministic code in `factflow.memory.merge`; everything here is plain data.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

__all__ = [
    "DEFAULT_SECTIONS",
    "MAX_CONTENT_CHARS",
    "Bullet",
    "PlaybookState",
    "AddOp",
    "UpdateOp",
    "MergeOp",
    "RemoveOp",
    "TagOp",
    "RestoreOp",
    "DeltaOp",
    "LogOp",
    "Delta",
    "RejectedOp",
    "ApplyResult",
    "parse_bullet_id",
    "normalize_content",
]

# section name -> id prefix. The prefixes make a cited id say what kind of bullet it is.
DEFAULT_SECTIONS: dict[str, str] = {
    "strategies": "strat",
    "formulas": "form",
    "common_mistakes": "mist",
    "domain_facts": "fact",
    "tool_use": "tool",
    "other": "misc",
}
MAX_CONTENT_CHARS = 2000  # one bullet is a lesson, not a document; keeps the prompt bounded
_MAX_TRACE_IDS = 20  # provenance stays bounded however often a bullet is tagged
_ID_RE = re.compile(r"^([a-z][a-z0-9_]{0,15})-(\d{1,9})$")


def parse_bullet_id(bullet_id: str) -> tuple[str, int] | None:
    """`strat-00042` -> ("strat", 42); None when the id is not of that shape."""
    m = _ID_RE.match(bullet_id)
    return (m.group(1), int(m.group(2))) if m else None


def normalize_content(text: str) -> str:
    """Collapse whitespace: two bullets that differ only in spacing are the same bullet."""
    return " ".join(text.split())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Bullet(_Strict):
    """One itemized lesson. Counters are the Reflector's helpful/harmful/neutral tags."""

    id: str
    section: str
    content: str
    helpful: int = 0
    harmful: int = 0
    neutral: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    created_version: int = 0
    updated_version: int = 0
    trace_ids: list[str] = Field(default_factory=list, description="Traces that produced or tagged it.")
    sources: list[str] = Field(default_factory=list, description="Ops that shaped it, e.g. 'v12:MERGE'.")

    def with_provenance(self, version: int, op: str, trace_id: str | None) -> Bullet:
        sources = [*self.sources, f"v{version}:{op}"][-_MAX_TRACE_IDS:]
        traces = self.trace_ids
        if trace_id and trace_id not in traces:
            traces = [*traces, trace_id][-_MAX_TRACE_IDS:]
        return self.model_copy(update={"sources": sources, "trace_ids": traces})


class PlaybookState(_Strict):
    """The whole playbook at one version. `bullets` keeps insertion order (= id order for ADDs)."""

    sections: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_SECTIONS))
    bullets: dict[str, Bullet] = Field(default_factory=dict)
    version: int = 0
    next_id: int = 1
    # normalized content -> id, so an exact-duplicate ADD is rejected in O(1) at 10k bullets
    _content_index: dict[tuple[str, str], str] | None = PrivateAttr(default=None)

    def content_index(self) -> dict[tuple[str, str], str]:
        if self._content_index is None:
            self._content_index = {
                (b.section, normalize_content(b.content).lower()): b.id for b in self.bullets.values()
            }
        return self._content_index

    def __eq__(self, other: object) -> bool:
        # the private index is a cache, and dict order is not part of the state
        if not isinstance(other, PlaybookState):
            return NotImplemented
        return self.same_content(other) and (self.version, self.next_id) == (other.version, other.next_id)

    __hash__ = None  # type: ignore[assignment]

    def same_content(self, other: PlaybookState) -> bool:
        """Equal bullets and sections (version and id counter aside): what rollback must restore."""
        return self.sections == other.sections and self.bullets == other.bullets


class AddOp(_Strict):
    type: Literal["ADD"] = "ADD"
    section: str
    content: str
    id: str | None = Field(None, description="Assigned by the merge; given only when replaying the log.")


class UpdateOp(_Strict):
    """New wording for one bullet. `counters="keep"` (default) keeps its helpful/harmful/neutral
    tags: the lesson is the same, said better; "reset" zeroes them because they judged old text."""

    type: Literal["UPDATE"] = "UPDATE"
    id: str
    content: str
    section: str | None = None
    counters: Literal["keep", "reset"] = "keep"


class MergeOp(_Strict):
    type: Literal["MERGE"] = "MERGE"
    ids: list[str] = Field(min_length=2)
    content: str | None = Field(None, description="Merged text; default keeps the first bullet's.")


class RemoveOp(_Strict):
    type: Literal["REMOVE"] = "REMOVE"
    id: str
    reason: str = Field("", description="Why it was removed (curator, prune rule, rollback), logged.")


class TagOp(_Strict):
    type: Literal["TAG"] = "TAG"
    id: str
    tag: Literal["helpful", "harmful", "neutral"]
    count: int = Field(1, ge=1, le=1000)


class RestoreOp(_Strict):
    """Put one bullet back verbatim (rollback, import). Not offered to the Curator."""

    type: Literal["RESTORE"] = "RESTORE"
    bullet: Bullet


DeltaOp = Annotated[AddOp | UpdateOp | MergeOp | RemoveOp | TagOp, Field(discriminator="type")]
LogOp = Annotated[AddOp | UpdateOp | MergeOp | RemoveOp | TagOp | RestoreOp, Field(discriminator="type")]


class Delta(_Strict):
    """A batch of ops applied in one transaction, in order; later ops see earlier ones."""

    ops: list[DeltaOp] = Field(default_factory=list)
    reason: str = ""


class RejectedOp(_Strict):
    op: LogOp
    reason: str


class ApplyResult(_Strict):
    """What one apply did. `version` is the playbook version after it (unchanged if nothing applied)."""

    version: int
    base_version: int | None = None
    applied: list[LogOp] = Field(default_factory=list)
    rejected: list[RejectedOp] = Field(default_factory=list)
    rebased: bool = Field(False, description="The base version was stale; ops were re-validated.")
    conflicts: list[str] = Field(default_factory=list, description="Ids also changed since the base.")
