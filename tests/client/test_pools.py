"""Warm pools through the SDK: the async client's set, list, get and delete, and another
project's pool. No guest boots here (a pool that keeps none makes no template): a pool that
serves runs, with real micro-VMs, is the README's block (tests/cli/test_readme_runs.py); the
logic over a simulated node is tests/api/test_pools.py."""

import asyncio

from hutch.client import AsyncClient
from hutch.client.errors import Invalid, NotFound
from tests.controller import Controller, new_project


async def test_a_pool_set_listed_got_and_deleted_and_not_another_projects(
    controller: Controller, aclient: AsyncClient
) -> None:
    pool = await aclient.pools.set("busybox", min_ready=0, memory_mib=192)
    assert (pool.image, pool.memory_mib, pool.min_ready, pool.ready) == ("busybox", 192, 0, 0)
    assert pool.state == "preparing" and pool.runtime == "microvm"
    again = await aclient.pools.set("busybox", min_ready=0, memory_mib=192)
    assert again.id == pool.id  # one pool per image and shape
    assert [p.id async for p in aclient.pools.list()] == [pool.id]
    assert (await aclient.pools.get("busybox")).id == pool.id
    try:
        await aclient.pools.set("busybox", min_ready=0, memory_mib=32)
    except Invalid as e:
        assert "memory 32 MiB is too little" in str(e), e
    else:
        raise AssertionError("a pool of a micro-VM too small for one")

    async with AsyncClient(
        controller.url, controller.token, project=new_project(controller, "other")
    ) as other:
        for ref in (pool.id, "busybox"):
            for attempt in (other.pools.get, other.pools.delete):
                try:
                    await attempt(ref)
                except NotFound as e:
                    assert "no pool" in str(e), e
                else:
                    raise AssertionError(f"another project's pool {ref}")
        assert [p async for p in other.pools.list()] == []

    await aclient.pools.delete(pool.id)
    for _ in range(100):  # the leader removes it
        if not [p async for p in aclient.pools.list()]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the pool was never removed")
