"""Moving per-request sections after static ones, where that is safe (pure; no tokenizer).

Safe means: a section that is ``pinned`` never moves, nor does a per-request ``assistant`` section (moving a
prefilled answer would change the conversation's turns). Static sections after such a section stay where
they are. Moved sections keep their relative order. A moved per-request ``system`` section that would land
after user content becomes part of the user turn, since most chat templates accept a system message only
first; that change is reported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lorafleet.templates.spec import PromptTemplate, Section


@dataclass(frozen=True, slots=True)
class ReorderPlan:
    sections: tuple[Section, ...]  #: the new order
    changes: tuple[str, ...]  #: one line per moved section (and role change)
    blocked: tuple[str, ...]  #: static sections that stay behind per-request content, and why

    @property
    def is_noop(self) -> bool:
        return not self.changes


def _is_movable(s: Section) -> bool:
    return not s.pinned and s.role != "assistant"


def plan_reorder(template: PromptTemplate) -> ReorderPlan:
    """Static sections first (up to the first per-request section that cannot move), then the rest."""
    sections = list(template.sections)
    stop = next((i for i, s in enumerate(sections) if not s.is_static and not _is_movable(s)), len(sections))
    head, tail = sections[:stop], sections[stop:]
    statics = [s for s in head if s.is_static]
    last_static = max((i for i, s in enumerate(head) if s.is_static), default=-1)
    changes: list[str] = []
    moved: list[Section] = []
    seen_user = any(s.role != "system" for s in statics)
    for i, s in enumerate(head):
        if s.is_static:
            continue
        if i < last_static:
            changes.append(f"moved per-request section '{s.name}' after static section '{head[last_static].name}'")
            if s.role == "system" and seen_user:
                changes.append(f"section '{s.name}' joins the user turn (role system -> user): a system message "
                               "cannot follow user content")
                s = dataclasses.replace(s, role="user")
        seen_user = seen_user or s.role != "system"
        moved.append(s)
    blocked = tuple(f"static section '{s.name}' stays after '{tail[0].name}', which cannot move "
                    f"({'pinned' if tail[0].pinned else 'an assistant turn'})" for s in tail[1:] if s.is_static)
    new = tuple(statics + moved + tail) if changes else template.sections
    return ReorderPlan(new, tuple(changes), blocked)


def apply_reorder(template: PromptTemplate, plan: ReorderPlan) -> PromptTemplate:
    return dataclasses.replace(template, sections=plan.sections)
