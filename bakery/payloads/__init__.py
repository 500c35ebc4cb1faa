"""Steps that put more into the root filesystem; every module here is imported by the bake.

A module registers its step with ``bakery.steps.register_payload`` when imported. Example (a Go
binary built from a recipe directory and installed by ``rootfs.build(..., tool_binary=PATH)``)::

    from bakery.pipeline import Step
    from bakery.steps import register_payload

    def make(ctx, staging, inputs):          # write the output into staging.out
        run(["go", "build", "-o", staging.out / "tool", "."], cwd=RECIPE)
        staging.meta["bytes"] = (staging.out / "tool").stat().st_size

    register_payload(
        Step("tool", make, params=lambda ctx: {"flags": FLAGS, "epoch": ctx.opts.epoch},
             files=(RECIPE / "go.mod", RECIPE / "go.sum", RECIPE / "main.go"),
             code=("bakery.payloads.tool",), tools=("go",)),
        rootfs_args=lambda ctx, entry: {"tool_binary": entry.out / "tool"},
    )

Its key (so its cache entry) then changes exactly when one of those inputs does, and the rootfs
step, whose key includes it, runs again.
"""
