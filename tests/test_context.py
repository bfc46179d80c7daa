"""Tests of fastpipe.context (thread-local context stacks)."""

import threading

import pytest

from fastpipe import context
from conftest import join_thread
from fastpipe.errors import GraphError




@context.define_context()
class Plain(object):
    def __init__(self, tag=None):
        self.tag = tag


@context.define_context(allow_default=True)
class WithDefault(object):
    def __init__(self, tag="default"):
        self.tag = tag


@context.define_context()
class Logged(object):
    log = []

    def __init__(self, tag):
        self.tag = tag

    def __enter__(self):
        # The class's own enter runs before the push.
        Logged.log.append(("enter", self.tag, Logged.current(required=False)))
        return "ignored"

    def __exit__(self, *args):
        # ...and its own exit after the pop.
        Logged.log.append(("exit", self.tag, Logged.current(required=False)))


def test_current_requires_active_context():
    assert Plain.current(required=False) is None
    with pytest.raises(GraphError, match="required but none is active"):
        Plain.current()
    # GraphError is an AssertionError, like Caffe2's assert.
    with pytest.raises(AssertionError):
        Plain.current()


def test_nesting_and_return_value():
    a, b = Plain("a"), Plain("b")
    with a as got_a:
        assert got_a is a
        assert Plain.current() is a
        with b:
            assert Plain.current() is b
        assert Plain.current() is a
    assert Plain.current(required=False) is None


def test_current_value_is_type_checked():
    a = Plain()
    assert Plain.current(a) is a
    assert Plain.current(value=a, required=True) is a
    with pytest.raises(GraphError, match="Wrong context type"):
        Plain.current(WithDefault())


def test_own_enter_exit_order():
    Logged.log[:] = []
    outer = Logged("outer")
    with outer as got:
        assert got is outer  # own __enter__'s return value is ignored
        with Logged("inner"):
            pass
    assert Logged.log == [
        ("enter", "outer", None),
        ("enter", "inner", outer),
        ("exit", "inner", outer),
        ("exit", "outer", None),
    ]


def test_exit_out_of_order_raises():
    a, b = Plain("a"), Plain("b")
    a.__enter__()
    b.__enter__()
    try:
        with pytest.raises(GraphError):
            a.__exit__(None, None, None)
        assert Plain.current() is b  # the stack is left intact
    finally:
        b.__exit__(None, None, None)
        a.__exit__(None, None, None)
    assert Plain.current(required=False) is None


def test_decorator_use():
    p = Plain("deco")

    @p
    def f(x):
        return Plain.current(), x

    assert f(3) == (p, 3)
    assert Plain.current(required=False) is None


def test_default_is_created_once_and_permanent():
    results = {}

    def run():
        d1 = WithDefault.current()
        d2 = WithDefault.current()
        with WithDefault("x") as x:
            inner = WithDefault.current()
        results["v"] = (d1, d2, x, inner, WithDefault.current())

    t = threading.Thread(target=run)
    t.start()
    join_thread(t)
    d1, d2, x, inner, after = results["v"]
    assert d1 is d2 and d1.tag == "default"
    assert inner is x
    assert after is d1


def test_stacks_are_thread_local():
    main = Plain("main")
    seen = {}
    started = threading.Event()
    release = threading.Event()

    def other():
        seen["before"] = Plain.current(required=False)
        with Plain("other") as o:
            started.set()
            release.wait(10)
            seen["inside"] = Plain.current() is o

    with main:
        t = threading.Thread(target=other)
        t.start()
        assert started.wait(10)
        assert Plain.current() is main  # the other thread's push is invisible
        release.set()
        join_thread(t)
    assert seen == {"before": None, "inside": True}


def test_subclass_shares_parent_stack():
    class Sub(Plain):
        pass

    s = Sub("s")
    with s:
        assert Plain.current() is s
        assert Sub.current() is s


def test_cannot_define_context_twice():
    with pytest.raises(GraphError):
        @context.define_context()
        class Again(Plain):
            pass


# --- Managed / DefaultManaged ------------------------------------------------


class MBase(context.Managed):
    def __init__(self, tag=None):
        self.tag = tag


class MSub(MBase):
    pass


class MDefault(context.DefaultManaged):
    pass


def test_managed_current_and_subclass_stacks():
    assert MBase.current(required=False) is None
    with pytest.raises(AssertionError):
        MBase.current()
    b = MBase("b")
    s = MSub("s")
    with b:
        assert MBase.current() is b
        assert MSub.current(required=False) is None
        with s:
            assert MBase.current() is s
            assert MSub.current() is s
        assert MBase.current() is b
    assert MBase.current(required=False) is None


def test_managed_value_type_check_and_decorator():
    b = MBase()
    assert MBase.current(b) is b
    with pytest.raises(GraphError):
        MSub.current(b)

    @b
    def f():
        return MBase.current()
    assert f() is b


def test_default_managed():
    d = MDefault.current()
    assert isinstance(d, MDefault)
    assert MDefault.current() is d
    with MDefault() as other:
        assert MDefault.current() is other
    assert MDefault.current() is d
