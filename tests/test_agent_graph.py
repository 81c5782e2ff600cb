"""Graph logic with a scripted tool-calling chat model (pure logic; the real model is in test_agent_e2e).

The fake store and playbook keep the tests about routing, state and the loop guard; the real
FactStore/Playbook/SmolLM2 path is covered end to end elsewhere.
"""

from __future__ import annotations

from typing import Any

import pytest
from _agent_fakes import FACTS, FakePlaybook, FakeStore, FakeToolCallingModel
from langchain_core.messages import AIMessage, SystemMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver

from factflow.agent.cite import attribute, citation_model, parse_citations
from factflow.agent.graph import build_graph
from factflow.agent.turn_policy import tools_could_help
from factflow.settings import Settings


def _tool_call(name: str, args: dict[str, Any], i: int = 0) -> AIMessage:
    return AIMessage(
        content="", tool_calls=[{"name": name, "args": args, "id": f"call_{i}", "type": "tool_call"}]
    )


def _graph(model: FakeToolCallingModel, store: FakeStore, **settings: Any) -> Any:
    """The graph with the decide step always run, so a script's tool calls are reached."""
    settings = {"agent_decide": "always", **settings}
    return build_graph(
        model, store, FakePlaybook(), checkpointer=InMemorySaver(), settings=Settings(**settings)
    )


def test_graph_shape_snapshot() -> None:
    graph = _graph(FakeToolCallingModel(script=[AIMessage(content="x")]), FakeStore(FACTS))
    g = graph.get_graph()
    edges = sorted((e.source, e.target, bool(e.conditional)) for e in g.edges)
    assert edges == [
        ("__start__", "learn", True),
        ("__start__", "retrieve", True),
        ("cite", "writeback", False),
        ("generate", "cite", True),
        ("generate", "tools", True),
        ("learn", "__end__", False),
        ("retrieve", "generate", False),
        ("tools", "generate", False),
        ("writeback", "__end__", False),
    ]


def test_answer_with_marker_is_cited_and_written_back() -> None:
    model = FakeToolCallingModel(script=[AIMessage(content="It is Paris [f-paris] [made-up].")])
    store = FakeStore(FACTS)
    out = _graph(model, store).invoke(
        {"question": "capital of Zorbia?"}, {"configurable": {"thread_id": "t"}}
    )
    assert out["cited_fact_ids"] == ["f-paris"]
    assert "[made-up]" not in out["answer"]  # unknown markers are stripped, not trusted
    assert model.structured_calls == 0  # the model cited by itself: no extra pass
    assert store.proposed == [(out["answer"], ["f-paris"], ["f-paris", "f-moon"])]
    system = model.seen[0][0]
    assert isinstance(system, SystemMessage)
    assert "[f-paris] The capital of Zorbia is Paris." in str(system.content)
    assert "[strat-00001]" in str(system.content)
    assert set(out["timings"]) == {"retrieve", "render", "decide", "generate", "cite", "writeback"}
    assert model.decisions == ["answer"]


def test_constrained_citation_pass_when_model_cites_nothing() -> None:
    model = FakeToolCallingModel(
        script=[AIMessage(content="Paris.")],
        citations={"cited_fact_ids": ["f-paris"], "used_bullet_ids": ["strat-00001"]},
    )
    out = _graph(model, FakeStore(FACTS), agent_cite_mode="model").invoke(
        {"question": "capital of Zorbia?"}, {"configurable": {"thread_id": "t"}}
    )
    assert model.structured_calls == 1
    assert out["cited_fact_ids"] == ["f-paris"]
    assert out["used_bullet_ids"] == ["strat-00001"]
    assert out["answer"].endswith("[f-paris]")


def test_tool_round_trip_adds_found_facts() -> None:
    model = FakeToolCallingModel(
        script=[_tool_call("get_fact", {"fact_id": "f-moon"}), AIMessage(content="Blue [f-moon].")]
    )
    store = FakeStore({"f-paris": FACTS["f-paris"]} | {"f-moon": FACTS["f-moon"]})
    out = _graph(model, store).invoke({"question": "capital?"}, {"configurable": {"thread_id": "t"}})
    tool_messages = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert len(tool_messages) == 1 and "Blue" in str(tool_messages[0].content)
    assert "f-moon" in out["retrieved_ids"]  # found by a tool, so it may be cited
    assert out["cited_fact_ids"] == ["f-moon"]
    assert {"search_facts", "get_fact"} <= set(model.bound_tools)


@pytest.mark.parametrize(
    ("question", "needed"),
    [
        ("Which city is the seat of government of Zorbia?", False),
        ("Who founded the Velkor observatory?", False),
        ("What is 17 * 23?", True),
        ("How many years passed between the two treaties?", True),
        ("Is the Quillmar river longer than the Tarn?", True),
        ("What share of Zorbia's exports is squash, in percent?", True),
    ],
)
def test_tools_could_help_only_for_arithmetic_user_tools_or_later_rounds(question: str, needed: bool) -> None:
    assert tools_could_help(question, user_tools=False, rounds=0) is needed
    assert tools_could_help(question, user_tools=True, rounds=0)  # a user tool may do anything
    assert tools_could_help(question, user_tools=False, rounds=1)  # after a tool, the model decides


def test_auto_decide_skips_the_decision_when_no_tool_could_help() -> None:
    model = FakeToolCallingModel(
        script=[_tool_call("get_fact", {"fact_id": "f-moon"}), AIMessage(content="Paris [f-paris].")]
    )
    out = _graph(model, FakeStore(FACTS), agent_decide="auto").invoke(
        {"question": "capital of Zorbia?"}, {"configurable": {"thread_id": "t"}}
    )
    assert model.decisions == []  # no decide call: the turn is one model call
    assert out["tool_rounds"] == 0 and len(model.seen) == 1
    out = _graph(model, FakeStore(FACTS), agent_decide="auto").invoke(
        {"question": "What is 2 + 2?"}, {"configurable": {"thread_id": "u"}}
    )
    assert model.decisions  # a number in the question: the model decides (and may calculate)


def test_unknown_tool_becomes_an_observation() -> None:
    model = FakeToolCallingModel(script=[_tool_call("no_such_tool", {}), AIMessage(content="done")])
    # only the single protocol passes the model's own tool name through (decide uses an enum)
    out = _graph(model, FakeStore(FACTS), agent_tool_protocol="single").invoke(
        {"question": "x"}, {"configurable": {"thread_id": "t"}}
    )
    tool_messages = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert "no tool named 'no_such_tool'" in str(tool_messages[0].content)
    assert out["answer"] == "done"


@pytest.mark.parametrize("protocol", ["decide", "single"])
def test_loop_guard_bounds_tool_rounds(protocol: str) -> None:
    calls = [_tool_call("search_facts", {"query": f"zorbia {i}", "k": 2}, i) for i in range(10)]
    model = FakeToolCallingModel(script=calls)
    out = _graph(model, FakeStore(FACTS), max_tool_rounds=2, agent_tool_protocol=protocol).invoke(
        {"question": "x"}, {"configurable": {"thread_id": "t"}}
    )
    assert out["tool_rounds"] == 2
    assert len(model.seen) == 3  # two tool rounds, then one forced final answer
    assert "tool calls allowed" in str(model.seen[-1][0].content)
    assert not out["messages"][-1].tool_calls


def test_repeated_tool_call_is_answered_instead() -> None:
    same = [_tool_call("search_facts", {"query": "zorbia", "k": 2}, i) for i in range(3)]
    model = FakeToolCallingModel(script=[*same, AIMessage(content="Paris [f-paris].")])
    out = _graph(model, FakeStore(FACTS), max_tool_rounds=5).invoke(
        {"question": "zorbia?"}, {"configurable": {"thread_id": "t"}}
    )
    assert out["tool_rounds"] == 1  # the second identical call was not run
    assert not out["messages"][-1].tool_calls
    assert "search_facts" in str(model.seen[-1][0].content)  # tool results reach the answer prompt


def test_thread_keeps_history_and_resets_turn_fields() -> None:
    model = FakeToolCallingModel(script=[AIMessage(content="Paris [f-paris]."), AIMessage(content="Blue.")])
    graph = _graph(model, FakeStore(FACTS))
    cfg = {"configurable": {"thread_id": "t"}}
    graph.invoke({"question": "capital of Zorbia?"}, cfg)
    out = graph.invoke({"question": "moon?"}, cfg)
    assert out["retrieved_ids"] == []  # "moon?" matches no fact words: the old ids were reset
    assert out["cited_fact_ids"] == []
    assert [m.content for m in model.seen[1][1:]] == ["capital of Zorbia?", "Paris [f-paris].", "moon?"]


def test_feedback_takes_the_learn_path() -> None:
    model = FakeToolCallingModel(script=[AIMessage(content="Paris [f-paris].")])
    playbook = FakePlaybook()
    graph = build_graph(model, FakeStore(FACTS), playbook, checkpointer=InMemorySaver(), settings=Settings())
    cfg = {"configurable": {"thread_id": "t"}}
    graph.invoke({"question": "capital of Zorbia?"}, cfg)
    out = graph.invoke({"feedback": "correct"}, cfg)
    assert playbook.learned == [("capital of Zorbia?", "Paris [f-paris].", "correct")]
    assert out["learn"] == {"version": 2} and out["feedback"] is None


def test_citation_schema_is_an_enum_of_shown_ids() -> None:
    schema = citation_model(["f-1", "f-2"], ["b-1"]).model_json_schema()
    assert schema["properties"]["cited_fact_ids"]["items"]["enum"] == ["f-1", "f-2"]
    assert schema["additionalProperties"] is False
    with pytest.raises(ValueError):
        citation_model(["f-1"]).model_validate({"cited_fact_ids": ["f-9"]})
    assert parse_citations("a [f-2] b [x] [f-1] [f-2]", ["f-1", "f-2"]) == ["f-2", "f-1"]


def test_user_tool_name_clash_is_a_user_error() -> None:
    from langchain_core.tools import tool

    from factflow.errors import UserError

    @tool
    def get_fact(fact_id: str) -> str:
        """Shadow the built-in."""
        return fact_id

    with pytest.raises(UserError, match="rename your tool"):
        build_graph(FakeToolCallingModel(script=[]), FakeStore(FACTS), FakePlaybook(), tools=[get_fact])


def test_similarity_citation_needs_closeness_and_contributed_words() -> None:
    from factflow.memory.embed import get_embedder

    facts = [
        {"id": "f-cap", "text": "The capital of Zorbia is Quillmar.", "score": 1.0},
        {"id": "f-ban", "text": "Bananas are rich in potassium.", "score": 0.5},
    ]
    emb = get_embedder()
    question = "Which city is the seat of government of Zorbia?"
    cite = lambda answer: attribute(question, answer, facts, emb, threshold=0.5)  # noqa: E731
    assert cite("The seat of government of Zorbia is Quillmar.") == ["f-cap"]
    assert cite("I do not know which city is the seat of government of Zorbia.") == []
    assert cite("Zorbia has a seat of government.") == []  # adds nothing from any fact


def test_similarity_mode_cites_through_the_graph() -> None:
    model = FakeToolCallingModel(script=[AIMessage(content="The capital of Zorbia is Paris.")])
    out = _graph(model, FakeStore(FACTS)).invoke(
        {"question": "Which city is Zorbia's seat?"}, {"configurable": {"thread_id": "t"}}
    )
    assert out["cited_fact_ids"] == ["f-paris"]
    assert model.structured_calls == 0
