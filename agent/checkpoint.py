"""Where agent threads live: LangGraph checkpointers for `Agent`.

`open_checkpointer(settings)` returns the async SQLite saver on HOME/threads.sqlite3, or the async
Postgres saver when `FACTFLOW_CHECKPOINT_URL=postgresql://...` (several processes or hosts share
threads). Either runs on a private event-loop thread (`BackgroundSaver`), so the one compiled
graph works with `invoke` from plain code and with `ainvoke`/`astream` from any event loop: the
async savers alone are tied to the loop that opened them, the sync SQLite saver has no async
methods (`await graph.ainvoke` failed with it).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)

from factflow.errors import UserError
from factflow.settings import Settings

__all__ = ["BackgroundSaver", "open_checkpointer"]

_T = TypeVar("_T")


async def _collect(items: AsyncIterator[_T]) -> list[_T]:
    return [item async for item in items]


class BackgroundSaver(BaseCheckpointSaver[Any]):
    """An async checkpointer running on its own event loop in a daemon thread.

    Sync methods block on the loop; async methods await it from whatever loop calls them, so
    callers never share the saver's connection or locks across loops.
    """

    def __init__(
        self, open_saver: Callable[[], AbstractAsyncContextManager[BaseCheckpointSaver[Any]]]
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="factflow-checkpoints", daemon=True
        )
        self._thread.start()
        self._stack = AsyncExitStack()
        try:
            self.inner: BaseCheckpointSaver[Any] = self._run(self._enter(open_saver))
        except BaseException:
            self._stop()
            raise
        super().__init__(serde=self.inner.serde)

    async def _enter(
        self, open_saver: Callable[[], AbstractAsyncContextManager[BaseCheckpointSaver[Any]]]
    ) -> BaseCheckpointSaver[Any]:
        saver = await self._stack.enter_async_context(open_saver())
        setup = getattr(saver, "setup", None)
        if setup is not None:
            await setup()
        return saver

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _await(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def close(self) -> None:
        """Close the connection and stop the loop thread (idempotent)."""
        if self._loop.is_closed():
            return
        self._run(self._stack.aclose())
        self._stop()

    # -- sync ------------------------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._run(self.inner.aget_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        items = self.inner.alist(config, filter=filter, before=before, limit=limit)
        return iter(self._run(_collect(items)))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._run(self.inner.aput(config, checkpoint, metadata, new_versions))

    def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        self._run(self.inner.aput_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._run(self.inner.adelete_thread(thread_id))

    def get_next_version(self, current: Any, channel: None) -> Any:
        return self.inner.get_next_version(current, channel)

    # -- async -----------------------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._await(self.inner.aget_tuple(config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        items = self.inner.alist(config, filter=filter, before=before, limit=limit)
        for item in await self._await(_collect(items)):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._await(self.inner.aput(config, checkpoint, metadata, new_versions))

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        await self._await(self.inner.aput_writes(config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        await self._await(self.inner.adelete_thread(thread_id))


def open_checkpointer(settings: Settings) -> BackgroundSaver:
    """The configured thread store: Postgres at settings.checkpoint_url, else HOME/threads.sqlite3."""
    url = settings.checkpoint_url
    if url:
        if not url.startswith(("postgresql://", "postgres://")):
            raise UserError(
                "FACTFLOW_CHECKPOINT_URL is not a Postgres URL: use postgresql://USER@HOST:PORT/DB "
                "or unset it to keep threads in HOME/threads.sqlite3"
            )
        try:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        except ImportError:
            raise UserError(
                "FACTFLOW_CHECKPOINT_URL needs the Postgres checkpointer: pip install 'factflow[postgres]'"
            ) from None
        try:
            return BackgroundSaver(lambda: AsyncPostgresSaver.from_conn_string(url))
        except Exception as exc:
            raise UserError(
                f"cannot use the Postgres thread store at FACTFLOW_CHECKPOINT_URL ({type(exc).__name__}: "
                f"{exc}): check the server is up and the URL's user, password and database"
            ) from None
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    settings.home.mkdir(parents=True, exist_ok=True)
    path = str(settings.home / "threads.sqlite3")
    return BackgroundSaver(lambda: AsyncSqliteSaver.from_conn_string(path))
