"""Embed the factflow agent in an app: teach a fact, ask about it in other words, read the sources.

python examples/embed_agent.py      (uses FACTFLOW_HOME, default ~/.cache/factflow)
"""

from factflow import Agent


def main() -> None:
    with Agent() as agent:  # embedded default: SmolLM2-135M, Chroma and the playbook under HOME
        fact = agent.teach("The capital of Zorbia is Quillmar.")
        result = agent.ask("Which city is the seat of government of Zorbia?")
        print(result.answer)
        print("cited:", result.cited_fact_ids, "(taught:", fact.id + ")")
        print("write-back:", "accepted" if result.writeback and result.writeback.accepted else "rejected")
        agent.ask("And which country is it in?", thread_id=result.thread_id)  # same thread, with history


if __name__ == "__main__":
    main()
