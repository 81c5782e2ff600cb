"""`factflow chat`: the terminal REPL (prompt_toolkit for input, Rich for output).

Enter sends; Esc+Enter (or a line ending in `\\`) adds a new line; Up/Down walk the history kept in
HOME/chat_history. Ctrl-C while an answer streams stops that answer, not the REPL; Ctrl-D quits.
Every problem (unknown command, empty or oversized input, a tool error) prints one line and the
session goes on.
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from factflow.errors import UserError
from factflow.settings import Settings

__all__ = ["Repl", "run_repl", "COMMANDS"]

COMMANDS: dict[str, str] = {
    "/teach": "/teach <fact>          store a fact (it gets an id you can see in answers)",
    "/feedback": "/feedback <label>      feedback on the last answer (e.g. correct, wrong: <why>)",
    "/playbook": "/playbook              show the playbook bullets and version",
    "/facts": "/facts [query]         search facts (no query: facts shown in the last turn)",
    "/forget": "/forget <id> [--delete] stop using a fact and what was derived from it (--delete erases)",
    "/why": "/why                   sources and bullets behind the last answer",
    "/thread": "/thread [id|delete id] show/switch/delete threads",
    "/new": "/new                   start a new thread",
    "/export": "/export [path]         write this thread as JSON",
    "/help": "/help                  this list",
    "/quit": "/quit                  leave (Ctrl-D works too)",
}


class Repl:
    """Command dispatch and rendering, separate from the prompt loop so it can be driven directly."""

    def __init__(self, agent: Any, console: Console, thread_id: str | None = None) -> None:
        self.agent = agent
        self.console = console
        self.thread_id = thread_id or uuid.uuid4().hex[:12]
        self.handlers: dict[str, Callable[[str], None]] = {
            "/teach": self.cmd_teach,
            "/feedback": self.cmd_feedback,
            "/playbook": self.cmd_playbook,
            "/facts": self.cmd_facts,
            "/forget": self.cmd_forget,
            "/why": self.cmd_why,
            "/thread": self.cmd_thread,
            "/new": self.cmd_new,
            "/export": self.cmd_export,
            "/help": self.cmd_help,
        }

    # -- one line of input ---------------------------------------------------------------------

    def handle(self, text: str) -> bool:
        """Handle one input; False means quit. Errors print one line and the session continues."""
        text = text.strip()
        if not text:
            self.console.print("[yellow]empty question: type a question, or /help for commands[/]")
            return True
        if text in ("/quit", "/exit"):
            return False
        try:
            if text.startswith("/"):
                name, _, arg = text.partition(" ")
                handler = self.handlers.get(name.lower())
                if handler is None:
                    self.console.print(f"[yellow]unknown command {escape(name)}: type /help for the list[/]")
                else:
                    handler(arg.strip())
            else:
                self.ask(text)
        except UserError as exc:
            self.console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return True

    def ask(self, question: str) -> None:
        """Stream the answer; Ctrl-C stops this answer only."""
        events = self.agent.stream(question, thread_id=self.thread_id)
        result = None
        streamed = False
        started = time.perf_counter()
        self.console.print("[bold green]factflow>[/] ", end="")
        try:
            for event in events:
                if event.kind == "token":
                    streamed = True
                    self.console.print(event.text, end="", markup=False, highlight=False, soft_wrap=True)
                elif event.kind == "node" and event.node == "tools":
                    self.console.print("[dim](tool call)[/] ", end="")
                elif event.kind == "result":
                    result = event.result
        except KeyboardInterrupt:
            events.close()
            self.console.print("\n[yellow](stopped)[/]")
            return
        if result is None:
            return
        if not streamed:  # engines that do not stream (or a tool-only turn) still show the answer
            self.console.print(result.answer, markup=False, highlight=False, end="")
        self.console.print()
        if result.cited_fact_ids:
            sources = " ".join(f"[{i}]" for i in result.cited_fact_ids)
            self.console.print(f"sources: {sources}", style="dim", markup=False, highlight=False)
        status = "kept" if result.writeback and result.writeback.accepted else "not stored"
        self.console.print(
            f"[dim]{time.perf_counter() - started:.1f}s, write-back: {status}, /why for details[/]"
        )

    # -- commands ----------------------------------------------------------------------------

    def cmd_teach(self, arg: str) -> None:
        fact = self.agent.teach(arg)
        self.console.print(f"taught [cyan]\\[{escape(fact.id)}][/] {escape(fact.text)}")

    def cmd_forget(self, arg: str) -> None:
        parts = arg.split()
        erase = "--delete" in parts
        ids = [p for p in parts if p != "--delete"]
        if len(ids) != 1:
            raise UserError("usage: /forget <fact id> [--delete]; find ids with /facts <query>")
        gone = self.agent.forget(ids[0].strip("[]"), delete=erase)
        verb = "erased" if erase else "forgot (kept in history)"
        self.console.print(f"{verb}: {escape(', '.join(gone))}")

    def cmd_feedback(self, arg: str) -> None:
        with self.console.status("reflecting and curating..."):
            out = self.agent.feedback(self.thread_id, arg)
        change = (
            "unchanged" if out.version == out.version_before else f"v{out.version_before} -> v{out.version}"
        )
        self.console.print(f"feedback recorded; playbook {change}")

    def cmd_playbook(self, arg: str) -> None:
        rendered = self.agent.playbook.render(arg, budget_tokens=None)
        self.console.print(
            f"[bold]playbook v{self.agent.playbook.version}[/] ({len(rendered.bullet_ids)} bullets)"
        )
        self.console.print(escape(rendered.text) if rendered.text.strip() else "[dim](empty)[/]")

    def cmd_facts(self, arg: str) -> None:
        table = Table("id", "fact", "score")
        if arg:
            for hit in self.agent.store.search(arg, k=10, namespace=self.agent.namespace):
                table.add_row(escape(hit.fact.id), escape(hit.fact.text), f"{hit.score:.3f}")
        else:
            try:
                record = self.agent.why(self.thread_id)
            except UserError:
                self.console.print("[yellow]no turn yet: use /facts <query> to search the store[/]")
                return
            for fact in record.facts:
                table.add_row(escape(fact["id"]), escape(fact["text"]), f"{fact['score']:.3f}")
        self.console.print(table)

    def cmd_why(self, arg: str) -> None:
        record = self.agent.why(self.thread_id)
        cited = set(record.cited_fact_ids)
        self.console.print(f"[bold]question:[/] {escape(record.question)}")
        self.console.print(f"[bold]answer:[/] {escape(record.answer)}")
        self.console.print("[bold]facts shown[/] (* = cited):")
        for fact in record.facts:
            mark = "*" if fact["id"] in cited else " "
            self.console.print(f" {mark} \\[{escape(fact['id'])}] {escape(fact['text'])}")
        if not record.facts:
            self.console.print("   (none)")
        self.console.print(
            f"[bold]bullets used:[/] {', '.join(record.used_bullet_ids) or '(none)'} "
            f"(playbook v{record.playbook_version})"
        )
        for call in record.tool_calls:
            self.console.print(
                f"[bold]tool call:[/] {escape(call['name'])}({escape(json.dumps(call['args']))})"
            )
        if record.writeback is not None:
            verdict = "accepted" if record.writeback.accepted else "rejected"
            reasons = "; ".join(record.writeback.reasons) or "-"
            self.console.print(f"[bold]write-back:[/] {verdict} ({escape(reasons)})")

    def cmd_thread(self, arg: str) -> None:
        parts = shlex.split(arg) if arg else []
        if parts[:1] == ["delete"] and len(parts) == 2:
            self.agent.delete_thread(parts[1])
            self.console.print(f"deleted thread {escape(parts[1])}")
            return
        if len(parts) == 1:
            self.thread_id = parts[0]
            self.console.print(f"switched to thread {escape(self.thread_id)}")
            return
        self.console.print(f"current thread: [cyan]{self.thread_id}[/]")
        for info in self.agent.threads()[:20]:
            self.console.print(f"  {info.thread_id}  {info.turns} turns  {escape(info.last_question[:60])}")

    def cmd_new(self, arg: str) -> None:
        self.thread_id = uuid.uuid4().hex[:12]
        self.console.print(f"new thread [cyan]{self.thread_id}[/]")

    def cmd_export(self, arg: str) -> None:
        path = (
            Path(arg).expanduser() if arg else self.agent.settings.home / "exports" / f"{self.thread_id}.json"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.agent.export(self.thread_id), indent=2, default=str))
        self.console.print(f"exported thread to {escape(str(path))}")

    def cmd_help(self, arg: str) -> None:
        for line in COMMANDS.values():
            self.console.print(escape(line))
        self.console.print("Enter sends; Esc+Enter or a trailing \\ adds a line; Ctrl-C stops an answer.")


def _session(settings: Settings) -> Any:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.key_binding import KeyBindings

    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    @bindings.add("enter")
    def _submit(event: Any) -> None:
        buffer = event.current_buffer
        if buffer.text.endswith("\\"):  # a trailing backslash continues the input on a new line
            buffer.delete_before_cursor(1)
            buffer.insert_text("\n")
        else:
            buffer.validate_and_handle()

    settings.home.mkdir(parents=True, exist_ok=True)
    return PromptSession(history=FileHistory(str(settings.home / "chat_history")), key_bindings=bindings)


def run_repl(
    settings: Settings,
    *,
    thread_id: str | None = None,
    console: Console | None = None,
    chat_model: Any = None,
) -> None:
    """Load the agent, then read-eval-print until /quit or Ctrl-D."""
    from factflow.agent.api import Agent

    console = console or Console(highlight=False)  # answers are prose: no number/URL colouring
    started = time.perf_counter()
    with console.status("loading the model, fact store and playbook..."):
        agent = Agent(settings, chat_model=chat_model)
    repl = Repl(agent, console, thread_id)
    console.print(
        f"[bold]factflow chat[/] ready in {time.perf_counter() - started:.1f}s - "
        f"model {escape(settings.model)}, "
        f"playbook v{agent.playbook.version}, thread {repl.thread_id}. /help for commands, Ctrl-D to quit."
    )
    session = _session(settings)
    try:
        while True:
            try:
                text = session.prompt("you> ")
            except KeyboardInterrupt:  # Ctrl-C at the prompt clears the line
                continue
            except EOFError:
                break
            if not repl.handle(text):
                break
    finally:
        agent.close()
    console.print("bye")


if __name__ == "__main__":  # `python -m factflow.agent.repl`: the REPL without the CLI around it
    from factflow.settings import get_settings

    run_repl(get_settings())
