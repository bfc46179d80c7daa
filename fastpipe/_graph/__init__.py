"""Private modules behind :mod:`fastpipe.core` (the graph layer).

They import in one direction, bottom to top::

    registry            hooks net_builder and schema register into
    scope               DataType, IsOperator, NameScope, DeviceScope
    blob                BlobReference, input/output name rectification
    operator            MakeArgument, CreateOperator, Python op registration
    ssa                 get_ssa and friends, control-op blob remapping
    clone               Net.Clone's one-pass copy of the operators
    net                 Net, clone_and_bind_net
    step                ExecutionStep, Plan, execution_step

:mod:`fastpipe.core` re-exports the public names; nothing here imports
``core``, ``net_builder``, ``schema``, ``task`` or ``workspace``.
"""
