"""Give the agent your own tool: a LangChain `@tool` with typed arguments is all it takes.

The 135M default model calls tools through a constrained JSON action (its arguments are forced to
match the tool's schema); `tool_choice` makes the first step of each turn call this tool.

    python examples/custom_tool.py
"""

from langchain_core.tools import tool

from factflow import Agent


@tool
def shipping_days(country: str) -> str:
    """Days a parcel takes to reach a country."""
    days = {"france": 2, "japan": 6, "brazil": 9}.get(country.strip().lower())
    return f"Parcels to {country} take {days} days." if days else f"No shipping data for {country}."


def main() -> None:
    with Agent(tools=[shipping_days], tool_choice="shipping_days") as agent:
        result = agent.ask("How many days does a parcel take to reach Japan?")
        print(result.answer)
        print("tool calls:", agent.why(result.thread_id).tool_calls)


if __name__ == "__main__":
    main()
