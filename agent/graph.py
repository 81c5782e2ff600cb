"""The agent as one LangGraph graph, built by one factory; the compiled graph is public.

    START -> retrieve -> generate <-> tools          (loop guard: settings.max_tool_rounds)
                         generate -> cite -> writeback -> END
    START -> learn -> END                            (when the input carries feedback)

retrieve: hybrid fact search + playbook render within the token budget. generate: the chat model
with the bullets `[id] text` and facts `[id] text` in the system prompt and the tools bound
(`chat_model.bind_tools`: the server's native tool calls where FACTFLOW_TOOL_CALLS resolves to
"native", the constrained JSON action format otherwise; serving/structured.py).
tools: runs the calls; errors become observations the model sees ("... fix and retry"), never
exceptions. cite: ids written as `[id]` in the answer, validated against the ids shown this turn;
when the model cited nothing valid, a constrained pass whose JSON schema is an enum of the shown
ids picks them (so even the 135M default cites). writeback: `store.propose` (the gate).
learn: ACE reflect -> curate -> new playbook version through `playbook.learn`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, StateGraph
from langgraph.types import Overwrite, interrupt
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from factflow.agent.cite import attribute, citation_model, parse_citations, strip_unknown_markers
from factflow.agent.prompts import TOOL_BUDGET_NOTE, cite_prompt, decide_note, system_prompt
from factflow.agent.state import AgentState, FactRef
from factflow.agent.turn_policy import answer_spans, focus_facts, span_model, tools_could_help
from factflow.errors import UserError
from factflow.memory.answer_match import contains_match
from factflow.settings import Settings, get_settings

__all__ = ["build_graph", "default_tools", "NODES", "CONTROL_TAG"]

log = logging.getLogger(__name__)

CONTROL_TAG = "factflow:control"  # model calls whose tokens are not answer text (decisions, tool args)
NODES = ("retrieve", "generate", "tools", "cite", "writeback", "learn")
_HISTORY_MESSAGES = 6  # earlier turns kept in the prompt: enough for follow-ups, cheap for a 135M model


def default_tools(store: Any, namespace: str, retrieved: set[str]) -> list[BaseTool]:
    """The built-in tools: fact search/lookup over the store and a safe calculator."""
    from factflow.tools.calculator import calculator
    from factflow.tools.facts import make_fact_tools

    tools = [t for t in make_fact_tools(store, namespace, retrieved) if t.name != "propose_fact"]
    return [*tools, calculator]


def _current_turn(messages: Sequence[AnyMessage]) -> list[AnyMessage]:
    last_human = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=0)
    return list(messages[last_human:])


def _plain_history(messages: Sequence[AnyMessage]) -> list[BaseMessage]:
    """Earlier turns as question/answer pairs and this turn's question; tool traffic goes to the
    system prompt as text (a 135M model follows plain turns far better than call/result pairs)."""
    return [
        m
        for m in _history(messages)
        if isinstance(m, HumanMessage) or (isinstance(m, AIMessage) and not m.tool_calls)
    ]


def _tool_results(turn: Sequence[AnyMessage]) -> list[str]:
    """`name(args) -> result` lines of this turn's tool calls, for the system prompt."""
    calls = {c["id"]: c for m in turn if isinstance(m, AIMessage) for c in m.tool_calls}
    lines = []
    for m in turn:
        if isinstance(m, ToolMessage):
            call = calls.get(m.tool_call_id)
            args = json.dumps(call["args"], sort_keys=True) if call else "{}"
            lines.append(f"{m.name}({args}) -> {m.content}")
    return lines


def _call_key(name: str, args: dict[str, Any]) -> str:
    return f"{name}:{json.dumps(args, sort_keys=True, default=str)}"


def _as_ai(message: Any) -> AIMessage:
    if isinstance(message, AIMessage):
        return message
    return AIMessage(content=str(getattr(message, "content", message)))


def _decision_model(options: Sequence[str]) -> type[BaseModel]:
    """`{"action": <one of options>}`: a few tokens, so deciding costs little next to answering."""
    fields: dict[str, Any] = {"action": (Literal[tuple(options)], ...)}  # a runtime enum
    model: type[BaseModel] = create_model("NextStep", __config__=ConfigDict(extra="forbid"), **fields)
    return model


_QUESTION_ID = "factflow-q-"  # id prefix of the human message `retrieve` adds for a `question` input


def _incoming_question(state: AgentState) -> tuple[str, bool]:
    """The turn's question, and whether it arrived as a message.

    LangGraph's `messages` input (Studio, chat UIs, `langgraph dev`) ends the list with the
    user's message; the `question` input leaves the previous turn's answer last, and `retrieve`
    adds the question as a message with an id of its own, so a turn that died after `retrieve`
    is not mistaken for a new message.
    """
    messages = state.get("messages") or []
    last = messages[-1] if messages else None
    own = isinstance(last, HumanMessage) and str(last.id or "").startswith(_QUESTION_ID)
    if isinstance(last, HumanMessage) and not own and last.text.strip():  # `.text`: text parts joined
        return last.text.strip(), True
    question = state.get("question", "")
    if not question.strip():
        raise UserError("no question: send a `question`, or `messages` ending with the user's message")
    return question, False


def _history(messages: Sequence[AnyMessage]) -> list[BaseMessage]:
    """Prompt history: earlier turns as question/answer pairs, the current turn in full."""
    last_human = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=0)
    earlier = [
        m
        for m in messages[:last_human]
        if isinstance(m, HumanMessage) or (isinstance(m, AIMessage) and not m.tool_calls and m.content)
    ]
    return [*earlier[-_HISTORY_MESSAGES:], *messages[last_human:]]


def _tool_output(value: Any) -> str:
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, list | dict):
        import json

        return json.dumps(value, default=str)
    return str(value)


def build_graph(
    chat_model: BaseChatModel,
    store: Any,
    playbook: Any,
    *,
    tools: Sequence[BaseTool] = (),
    checkpointer: Any = None,
    settings: Settings | None = None,
    namespace: str | None = None,
    top_k: int | None = None,
    embedder: Any = None,
    tool_choice: str | None = None,
) -> Any:
    """Compile the agent graph. `tools` are user tools added to the built-in ones.

    `store` is a `FactStore`, `playbook` a `Playbook`; `checkpointer` (e.g. SqliteSaver) makes
    threads persistent; `embedder` (default `get_embedder()`) serves similarity citations.
    `tool_choice` forces the first round of a turn to be a tool call: "any" tool, or the one
    named (e.g. an app that must always consult its own tool); later rounds choose freely.
    Returns a `CompiledStateGraph` over `AgentState`.
    """
    settings = settings or get_settings()
    ns = namespace or settings.namespace
    k = top_k or settings.agent_top_k
    user_tools = list(tools)
    builtin_names = {t.name for t in default_tools(store, ns, set())}
    clash = builtin_names & {t.name for t in user_tools}
    if clash:
        raise UserError(f"tool name(s) {sorted(clash)} clash with built-in tools; rename your tool")
    tool_schemas = [*default_tools(store, ns, set()), *user_tools]  # for binding; calls use fresh ones
    bound = chat_model.bind_tools(tool_schemas) if settings.max_tool_rounds > 0 else chat_model
    first = bound
    if tool_choice not in (None, "auto", "none") and settings.max_tool_rounds > 0:
        if tool_choice == "any":
            first = chat_model.bind_tools(tool_schemas, tool_choice="any")
        else:
            named = [t for t in tool_schemas if t.name == tool_choice]
            if not named:
                raise UserError(
                    f"tool_choice={tool_choice!r} names no tool; "
                    f"use one of {sorted(t.name for t in tool_schemas)}"
                )
            first = chat_model.bind_tools(named, tool_choice="any")

    by_name = {t.name: t for t in tool_schemas}
    # decide protocol: the arguments of the chosen tool, constrained by that tool's schema only
    call_one = {
        t.name: chat_model.bind_tools([t], tool_choice="any").with_config(tags=[CONTROL_TAG])
        for t in tool_schemas
    }

    def _embedder() -> Any:
        nonlocal embedder
        if embedder is None:
            from factflow.memory.embed import get_embedder

            embedder = get_embedder()
        return embedder

    def route_input(state: AgentState) -> str:
        return "learn" if state.get("feedback") else "retrieve"

    def retrieve(state: AgentState) -> dict[str, Any]:
        question, asked = _incoming_question(state)
        t0 = time.perf_counter()
        hits = store.search(question, k=k, namespace=ns)
        t1 = time.perf_counter()
        rendered = playbook.render(question, budget_tokens=settings.playbook_token_budget)
        t2 = time.perf_counter()
        facts = focus_facts(hits, gap=settings.agent_fact_gap, order=settings.agent_fact_order)
        return {
            "question": question,
            "messages": []
            if asked
            else [HumanMessage(content=question, id=f"{_QUESTION_ID}{uuid.uuid4().hex}")],
            "facts": Overwrite(facts),
            "retrieved_ids": Overwrite([f["id"] for f in facts]),
            "playbook_text": rendered.text,
            "bullet_ids": list(rendered.bullet_ids),
            "playbook_version": int(playbook.version),
            "tool_rounds": 0,
            "answer": "",
            "cited_fact_ids": [],
            "used_bullet_ids": [],
            "writeback": None,
            "learn": None,
            "timings": Overwrite({"retrieve": t1 - t0, "render": t2 - t1}),
        }

    def generate(state: AgentState) -> dict[str, Any]:
        rounds = state.get("tool_rounds", 0)
        over_budget = rounds >= settings.max_tool_rounds
        if settings.agent_tool_protocol == "single":
            return _generate_single(state, rounds, over_budget)
        t0 = time.perf_counter()
        turn = _current_turn(state["messages"])
        made = {
            _call_key(c["name"], c["args"]) for m in turn if isinstance(m, AIMessage) for c in m.tool_calls
        }
        system = system_prompt(state.get("playbook_text", ""), state.get("facts", []), _tool_results(turn))
        prompt = [SystemMessage(content=system), *_plain_history(state["messages"])]
        forced = tool_choice if rounds == 0 and tool_choice not in (None, "auto", "none") else None
        action = "answer"
        if settings.max_tool_rounds > 0 and not over_budget:
            if forced and forced != "any":
                action = forced
            elif not forced and settings.agent_decide == "auto" and not tools_could_help(
                state["question"], user_tools=bool(user_tools), rounds=rounds
            ):
                action = "answer"  # no tool could add anything: skip a model call
            else:
                options = list(by_name) if forced == "any" else ["answer", *by_name]
                action = _decide(prompt, options)
        t1 = time.perf_counter()
        message: AIMessage | None = None
        if action != "answer":
            called = _as_ai(call_one[action].invoke(prompt))
            if (
                called.tool_calls
                and _call_key(called.tool_calls[0]["name"], called.tool_calls[0]["args"]) in made
            ):
                log.info("repeated tool call %s: answering instead", action)  # a loop the guard cuts short
            elif called.tool_calls:
                message = called
        if message is None:
            if over_budget and settings.max_tool_rounds > 0:
                prompt[0] = SystemMessage(content=f"{system}\n\n{TOOL_BUDGET_NOTE}")
            answer = _as_ai(chat_model.invoke(prompt))
            # the answer step is not offered tools: whatever it returns is the answer text
            message = AIMessage(content=answer.content, id=answer.id) if answer.tool_calls else answer
            if settings.agent_answer_span:
                message = _copy_span(state, message)
        return {"messages": [message], "timings": {"decide": t1 - t0, "generate": time.perf_counter() - t1}}

    def _copy_span(state: AgentState, message: AIMessage) -> AIMessage:
        """Answer-span step: the value is copied from the best fact, not recalled among look-alikes.

        The candidates are the runs of the best fact's words the question lacks; one candidate is
        the span, several are put to the model as an enum. An answer that already holds the span
        stays as written; otherwise it becomes the span, cited.
        """
        facts = [f for f in state.get("facts", []) if f["score"] > 0]  # retrieved, not tool results
        if not facts:
            return message
        best = max(facts, key=lambda f: f["score"])
        spans = answer_spans(state["question"], best["text"])
        if not spans:
            return message
        span = spans[0]
        if len(spans) > 1:
            schema = span_model(spans)
            ask = (
                f"Fact: {best['text']}\nQuestion: {state['question']}\n"
                "Which words of the fact answer the question?"
            )
            data = _pick(schema, [HumanMessage(content=ask)], "answer-span step")
            if data is None:  # invalid output: keep the answer
                return message
            span = str(data["span"])
        if contains_match(str(message.content), span):
            return message
        return AIMessage(content=f"{span} [{best['id']}]", id=message.id)

    def _decide(prompt: list[BaseMessage], options: list[str]) -> str:
        """One short constrained step: "answer" or the name of the tool to call next."""
        note = decide_note([by_name[o] for o in options if o in by_name], can_answer="answer" in options)
        schema = _decision_model(options)
        asked = HumanMessage(content=f"{prompt[-1].content}\n\n{note}")
        data = _pick(schema, [*prompt[:-1], asked], "tool decision")
        if data is None:  # invalid output: skipped -> answer
            return "answer" if "answer" in options else options[0]
        return str(data["action"])

    def _pick(schema: type[BaseModel], messages: list[BaseMessage], step: str) -> dict[str, Any] | None:
        """One constrained control call (not answer text); None when the model's output is invalid,
        a skipped step that is logged. A dead server or a bug propagates: the turn fails instead of
        quietly skipping the step."""
        try:
            constrained = chat_model.with_structured_output(schema).with_config(tags=[CONTROL_TAG])
            picked = constrained.invoke(messages)
        except (OutputParserException, ValidationError) as exc:
            log.warning("%s failed: %s", step, exc)
            return None
        return picked.model_dump() if isinstance(picked, BaseModel) else dict(picked)  # type: ignore[call-overload]

    def _generate_single(state: AgentState, rounds: int, over_budget: bool) -> dict[str, Any]:
        """One bind_tools call per round (for models strong enough to answer inside the JSON action)."""
        system = system_prompt(state.get("playbook_text", ""), state.get("facts", []))
        if over_budget and settings.max_tool_rounds > 0:
            system = f"{system}\n\n{TOOL_BUDGET_NOTE}"
        model = chat_model if over_budget else (first if rounds == 0 else bound)
        t0 = time.perf_counter()
        message = _as_ai(model.invoke([SystemMessage(content=system), *_history(state["messages"])]))
        dt = time.perf_counter() - t0
        if message.tool_calls and over_budget:
            # loop guard: a model that keeps calling tools gets its calls dropped, not another round
            message = AIMessage(
                content=str(message.content) or "I could not finish within the allowed tool calls.",
                id=message.id,
            )
        return {"messages": [message], "timings": {"generate": dt}}

    def route_generate(state: AgentState) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else "cite"

    def run_tools(state: AgentState) -> dict[str, Any]:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)
        retrieved = set(state.get("retrieved_ids", []))
        before = set(retrieved)
        by_name = {t.name: t for t in [*default_tools(store, ns, retrieved), *user_tools]}
        results: list[ToolMessage] = []
        t0 = time.perf_counter()
        for call in last.tool_calls:
            tool = by_name.get(call["name"])
            if tool is None:
                content = f"error: there is no tool named {call['name']!r}; use one of {sorted(by_name)}"
            else:
                try:
                    content = _tool_output(tool.invoke(call["args"]))
                except Exception as exc:  # the model should see its mistake, not crash the turn
                    content = f"error: {exc}. Please fix the arguments and retry."
            results.append(ToolMessage(content=content, tool_call_id=call["id"] or "", name=call["name"]))
        new_ids = [i for i in retrieved if i not in before]
        new_facts: list[FactRef] = []
        for fact_id in new_ids:
            fact = store.get(fact_id, namespace=ns)
            if fact is not None:
                new_facts.append({"id": fact.id, "text": fact.text, "score": 0.0})
        return {
            "messages": results,
            "retrieved_ids": new_ids,
            "facts": new_facts,
            "tool_rounds": state.get("tool_rounds", 0) + 1,
            "timings": {"tools": time.perf_counter() - t0},
        }

    def cite(state: AgentState) -> dict[str, Any]:
        last = state["messages"][-1]
        raw = str(last.content) if isinstance(last, AIMessage) else ""
        fact_ids = list(state.get("retrieved_ids", []))
        bullet_ids = list(state.get("bullet_ids", []))
        answer = strip_unknown_markers(raw, set(fact_ids) | set(bullet_ids))
        cited = parse_citations(answer, fact_ids)
        used = parse_citations(answer, bullet_ids)
        facts = [f for f in state.get("facts", []) if f["id"] in set(fact_ids)]
        t0 = time.perf_counter()
        added = False  # citations the system attached, not the model: weaker evidence for the gate
        if not cited and answer and facts:
            if settings.agent_cite_mode == "similarity":
                cited = attribute(
                    state["question"], answer, facts, _embedder(), threshold=settings.agent_cite_threshold
                )
            else:
                cited, picked_bullets = _model_citations(state, answer, facts, bullet_ids)
                used = used or picked_bullets
            if cited:  # the answer carries its sources, like a model that cites by itself
                answer = f"{answer} " + "".join(f"[{i}]" for i in cited)
                added = True
        # `messages` ends with the cited answer too (same id: replaces), for chat UIs and Studio
        replace = (
            [AIMessage(content=answer, id=last.id)] if isinstance(last, AIMessage) and answer != raw else []
        )
        return {
            "messages": replace,
            "answer": answer,
            "cited_fact_ids": cited,
            "citations_added": added,
            "used_bullet_ids": used,
            "timings": {"cite": time.perf_counter() - t0},
        }

    def _model_citations(
        state: AgentState, answer: str, facts: list[FactRef], bullet_ids: list[str]
    ) -> tuple[list[str], list[str]]:
        schema = citation_model([f["id"] for f in facts], bullet_ids)
        prompt = cite_prompt(state["question"], answer, facts, state.get("playbook_text", ""))
        data = _pick(schema, [HumanMessage(content=prompt)], "citation pass")
        if data is None:  # invalid output: a skipped step
            return [], []
        return (
            list(dict.fromkeys(data.get("cited_fact_ids", []))),
            list(dict.fromkeys(data.get("used_bullet_ids", []))),
        )

    def writeback(state: AgentState) -> dict[str, Any]:
        t0 = time.perf_counter()
        decision: dict[str, Any] | None = None
        answer = state.get("answer", "")
        if not answer.strip() or not settings.fact_writeback:
            return {"writeback": None, "timings": {"writeback": 0.0}}
        args = (answer, list(state.get("cited_fact_ids", [])), list(state.get("retrieved_ids", [])))
        opts: dict[str, Any] = {"namespace": ns, "system_cited": bool(state.get("citations_added"))}
        if settings.fact_writeback_approval:
            # The app confirms each write-back: show it what the gate would keep (a dry run, so
            # re-running this node on resume writes nothing twice), pause, write only if approved.
            try:
                preview = store.propose(*args, dry_run=True, **opts)
            except Exception as exc:  # the gate failing must not lose the answer; it is logged instead
                log.warning("write-back failed: %s", exc)
                return {"writeback": None, "timings": {"writeback": time.perf_counter() - t0}}
            if preview.accepted:
                kept = [c.claim for c in preview.claims if c.accepted]
                if not interrupt({"kind": "writeback_approval", "claims": kept}):
                    store.log(ns, "reject", answer, [], ["write-back declined by the app"])
                    declined = {**preview.model_dump(mode="json"), "accepted": False, "fact_id": None}
                    declined.update(fact_ids=[], reasons=["write-back declined by the app"])
                    return {"writeback": declined, "timings": {"writeback": time.perf_counter() - t0}}
        try:
            decision = store.propose(*args, **opts).model_dump(mode="json")
        except Exception as exc:  # the gate failing must not lose the answer; it is logged instead
            log.warning("write-back failed: %s", exc)
        return {"writeback": decision, "timings": {"writeback": time.perf_counter() - t0}}

    def learn(state: AgentState) -> dict[str, Any]:
        question = state.get("question", "")
        if not question:
            raise UserError("this thread has no answered question yet; ask something before giving feedback")
        turn = _current_turn(state.get("messages", []))
        # The Generator's reasoning, as far as the turn kept any: reasoning text a server returned
        # (content blocks of type "reasoning", or `reasoning_content`), then the tool calls it
        # chose, in order. The Reflector judges the answer against these steps.
        steps: list[str] = []
        for m in turn:
            if not isinstance(m, AIMessage):
                continue
            blocks = m.content if isinstance(m.content, list) else []
            steps += [
                str(b.get("reasoning") or b.get("text") or "")
                for b in blocks
                if isinstance(b, dict) and b.get("type") == "reasoning"
            ]
            steps.append(str(m.additional_kwargs.get("reasoning_content") or ""))
            steps += [f"called {c['name']}({json.dumps(c['args'], sort_keys=True)})" for c in m.tool_calls]
        result = playbook.learn(
            question,
            state.get("answer", ""),
            state.get("feedback") or "",
            chat_model,
            trajectory="\n".join(_tool_results(turn)),  # name(args) -> result of this turn's calls
            used_bullet_ids=tuple(state.get("used_bullet_ids", [])),
            reasoning="\n".join(s for s in steps if s.strip()),
        )
        dumped = result.model_dump(mode="json") if isinstance(result, BaseModel) else dict(result)
        return {"learn": dumped, "feedback": None, "playbook_version": int(playbook.version)}

    graph = StateGraph(AgentState)
    graph.add_node("retrieve", retrieve)
    graph.add_node("generate", generate)
    graph.add_node("tools", run_tools)
    graph.add_node("cite", cite)
    graph.add_node("writeback", writeback)
    graph.add_node("learn", learn)
    graph.add_conditional_edges(START, route_input, {"retrieve": "retrieve", "learn": "learn"})
    graph.add_edge("retrieve", "generate")
    graph.add_conditional_edges("generate", route_generate, {"tools": "tools", "cite": "cite"})
    graph.add_edge("tools", "generate")
    graph.add_edge("cite", "writeback")
    graph.add_edge("writeback", END)
    graph.add_edge("learn", END)
    return graph.compile(checkpointer=checkpointer)
