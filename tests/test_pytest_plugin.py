"""The pytest plugin as a user meets it: test files run by a fresh pytest that finds the plugin installed.

Each case writes a user's test file and runs it in a pytest subprocess (`pytester.runpytest_subprocess`), so
the plugin is loaded through its `pytest11` entry point exactly as in a project that installed decortask.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import AMQP_URL, REDIS_URL, require_amqp, require_redis

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
RUN_TIMEOUT = 120.0


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=RUN_TIMEOUT)


def documented_example() -> str:
    """The first Python block of docs/testing.md: the example a reader copies."""
    found = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert found is not None, "docs/testing.md has no python example"
    return found.group(1)


def test_the_documented_example_passes_as_it_is(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_tasks=documented_example())
    result = run(pytester, "-v")
    result.assert_outcomes(passed=7)


def test_markers_are_registered_for_strict_runs(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.decortask(**settings)*", "@pytest.mark.decortask_worker(*"])


def test_eager_mode_fails_a_test_whose_code_sends_what_json_cannot_carry(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_orders="""
        import datetime

        from decortask import task


        @task
        def send_receipt(order_id, placed_at):
            return f"receipt {order_id}"


        def place_order(order_id):  # the code under test, with the bug: a datetime is not JSON
            send_receipt.delay(order_id, datetime.datetime.now())


        def test_place_order(decortask_eager):
            place_order(7)
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ArgumentEncodingError*args[[]1[]] (a datetime)*"])


def test_mocker_patch_of_a_task_in_the_projects_module_is_honoured(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        **{
            "shop/__init__.py": "",
            "shop/tasks.py": """
            from decortask import TaskContext, task


            def charge_card(order_id):
                raise ConnectionError("no payment gateway in tests")


            @task(retries=2, delay=30)
            def charge(ctx: TaskContext, order_id: int) -> str:
                return charge_card(order_id)
            """,
            "test_shop.py": """
            from shop.tasks import charge


            def test_body_replaced_by_its_dotted_path(decortask_worker, mocker):
                fake = mocker.patch("shop.tasks.charge.fn", return_value="paid")
                handle = charge.delay(1)
                decortask_worker.wait(handle)
                assert handle.get() == "paid"
                assert fake.call_args.args[1:] == (1,)


            def test_helper_replaced_in_eager_mode(decortask_eager, mocker):
                mocker.patch("shop.tasks.charge_card", side_effect=[TimeoutError("slow"), "paid"])
                handle = charge.delay(2)
                assert (handle.get(), handle.attempts) == ("paid", 2)


            def test_send_replaced_entirely(decortask_app, mocker):
                sent = mocker.patch("shop.tasks.charge.delay")
                import shop.tasks

                shop.tasks.charge.delay(3)
                sent.assert_called_once_with(3)
                assert decortask_app.transport.queue_size(decortask_app.settings.default_queue) == 0
            """,
        }
    )
    result = run(pytester, "-v")
    result.assert_outcomes(passed=3)


@pytest.mark.parametrize(
    "kind",
    [
        "sqlite",
        pytest.param("redis", marks=pytest.mark.broker),
        pytest.param("amqp", marks=pytest.mark.broker),
    ],
)
def test_the_worker_fixture_runs_tasks_on_each_broker(pytester: pytest.Pytester, kind: str) -> None:
    broker = {"sqlite": "sqlite:///{tmp_path}/decortask.db", "redis": REDIS_URL, "amqp": AMQP_URL}[kind]
    if kind == "redis":
        require_redis()
    elif kind == "amqp":
        require_amqp()
    pytester.makepyfile(
        test_broker=f"""
        import pytest

        from decortask import TaskContext, task


        @task(retries=1, delay=0.1)
        def double(ctx: TaskContext, n: int) -> int:
            if ctx.attempt == 1 and n == 0:
                raise ConnectionError("first attempt fails")
            return 2 * n


        @pytest.mark.decortask(broker_url={broker!r}, store_url="sqlite:///{{tmp_path}}/store.db")
        @pytest.mark.decortask_worker(concurrency=4)
        def test_tasks_run_on_the_worker(decortask_worker):
            assert decortask_worker.app.settings.broker_url.startswith({kind!r})
            handles = [double.delay(n) for n in range(20)]
            results = decortask_worker.wait(*handles)
            assert [r.value for r in results] == [2 * n for n in range(20)]
            assert results[0].attempts == 2
        """
    )
    result = run(pytester, "--strict-markers")
    result.assert_outcomes(passed=1)


def test_ini_options_set_the_apps_urls(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        decortask_broker_url = sqlite:///{tmp_path}/broker.db
        decortask_store_url = sqlite:///{tmp_path}/broker.db
        """
    )
    pytester.makepyfile(
        test_ini="""
        from decortask import task
        from decortask.testing import run_pending


        @task
        def hello(name):
            return f"hello {name}"


        def test_app_uses_the_ini_urls(decortask_app, tmp_path):
            assert decortask_app.settings.broker_url == f"sqlite:///{tmp_path}/broker.db"
            handle = hello.delay("ini")
            assert run_pending() == 1 and handle.get() == "hello ini"
            assert (tmp_path / "broker.db").exists()
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_a_misspelt_worker_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_typo="""
        import pytest


        @pytest.mark.decortask_worker(threads=4)
        def test_it(decortask_worker):
            pass
        """
    )
    result = run(pytester)
    result.stdout.fnmatch_lines(
        ["*decortask_worker got unknown option(s) threads; known: queues, concurrency*"]
    )
    assert result.ret != 0


def test_each_test_gets_a_clean_app_and_the_previous_one_back_in_one_process(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_sequence="""
        import pytest

        from decortask import Decortask, current_app, task

        seen = {}


        @task(queue="emails")
        def send_mail(to):
            return to


        def test_1_the_projects_own_app_without_the_fixture():
            seen["project"] = current_app()


        def test_2_a_test_leaves_messages_and_makes_another_app_current(decortask_app):
            seen["first"] = decortask_app
            send_mail.delay("a@example.com")
            send_mail.delay("b@example.com")
            assert decortask_app.transport.queue_size("emails") == 2
            Decortask("memory://", "memory://")  # code under test made its own app current


        @pytest.mark.xfail(raises=RuntimeError, strict=True)
        def test_3_a_failing_test_leaves_messages_too(decortask_app):
            send_mail.delay("c@example.com")
            raise RuntimeError("the test failed half way")


        def test_4_the_next_test_starts_clean(decortask_app):
            assert current_app() is decortask_app and decortask_app is not seen["first"]
            assert decortask_app.transport.queue_size("emails") == 0
            assert decortask_app.handle(send_mail.delay("d@example.com").id).status.value == "PENDING"
            assert decortask_app.transport.queue_size("emails") == 1


        def test_5_the_projects_app_is_current_again():
            assert current_app() is seen["project"]
        """
    )
    run(pytester, "-v", "-p", "no:randomly").assert_outcomes(passed=4, xfailed=1)


# A flaskr-like project: the package is the app factory, the extension lives beside a tasks.py module, and
# the task needs the app context (it writes to the app's own database, which the app fixture creates).
FLASK_PROJECT = {
    "shop/__init__.py": """
    from flask import Flask

    from decortask.contrib.flask import Decortask

    decortask_ext = Decortask()


    def create_app(test_config=None):
        app = Flask(__name__)
        app.config.from_mapping(DATABASE="shop.sqlite")
        app.config.update(test_config or {})
        decortask_ext.init_app(app)
        from . import views

        app.register_blueprint(views.bp)
        return app
    """,
    "shop/db.py": """
    import sqlite3

    from flask import current_app


    def connect():
        return sqlite3.connect(current_app.config["DATABASE"])


    def init_db():
        with connect() as db:
            db.execute("create table orders (id integer primary key, receipt text)")
    """,
    "shop/tasks.py": """
    from decortask import task

    from .db import connect


    @task
    def write_receipt(order_id: int) -> str:
        receipt = f"receipt {order_id}"
        with connect() as db:  # the app context of the app the test created: its database
            db.execute("update orders set receipt = ? where id = ?", (receipt, order_id))
        return receipt
    """,
    "shop/views.py": """
    from flask import Blueprint

    from .db import connect
    from .tasks import write_receipt

    bp = Blueprint("orders", __name__)


    @bp.post("/orders/<int:order_id>")
    def place_order(order_id):
        with connect() as db:
            db.execute("insert into orders (id) values (?)", (order_id,))
        return write_receipt.delay(order_id).id
    """,
    "conftest.py": """
    import pytest

    from shop import create_app
    from shop.db import init_db


    @pytest.fixture
    def app(tmp_path):
        app = create_app({"TESTING": True, "DATABASE": str(tmp_path / "shop.sqlite")})
        with app.app_context():
            init_db()
        return app


    def receipt_of(app, order_id):
        from shop.db import connect

        with app.app_context():
            return connect().execute("select receipt from orders where id = ?", (order_id,)).fetchone()[0]
    """,
    "test_orders.py": """
    from conftest import receipt_of

    from decortask.testing import run_pending


    def test_eager_app_created_first(app, decortask_eager):
        task_id = app.test_client().post("/orders/1").get_data(as_text=True)
        assert decortask_eager.handle(task_id).get() == "receipt 1"
        assert receipt_of(app, 1) == "receipt 1"


    def test_eager_app_created_after_the_fixture(decortask_eager, app):
        task_id = app.test_client().post("/orders/2").get_data(as_text=True)
        assert decortask_eager.handle(task_id).get() == "receipt 2"
        assert receipt_of(app, 2) == "receipt 2"


    def test_run_pending_app_created_first(app, decortask_app):
        app.test_client().post("/orders/3")
        assert run_pending() == 1
        assert receipt_of(app, 3) == "receipt 3"


    def test_run_pending_app_created_after_the_fixture(decortask_app, app):
        app.test_client().post("/orders/4")
        assert run_pending() == 1
        assert receipt_of(app, 4) == "receipt 4"


    def test_worker_app_created_first(app, decortask_worker):
        task_id = app.test_client().post("/orders/5").get_data(as_text=True)
        [result] = decortask_worker.wait(decortask_worker.app.handle(task_id))
        assert (result.value, result.error_message) == ("receipt 5", None)
        assert receipt_of(app, 5) == "receipt 5"


    def test_worker_app_created_after_the_fixture(decortask_worker, app):
        task_id = app.test_client().post("/orders/6").get_data(as_text=True)
        [result] = decortask_worker.wait(decortask_worker.app.handle(task_id), timeout=5)
        assert (result.value, result.error_message) == ("receipt 6", None)
        assert receipt_of(app, 6) == "receipt 6"
    """,
}


def test_a_flask_app_created_before_or_after_the_fixtures_runs_its_tasks_on_the_test_app_in_its_context(
    pytester: pytest.Pytester,
) -> None:
    pytest.importorskip("flask")
    pytester.makepyfile(**FLASK_PROJECT)
    result = run(pytester, "-v", "-p", "no:randomly")
    result.assert_outcomes(passed=6)
    assert not (pytester.path / "decortask.db").exists()  # nothing went to the default app's store
