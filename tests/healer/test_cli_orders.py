"""`healer orders ...` and `healer render`, as an operator runs them, against real peers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fulfilment.models import OrderStatus
from healer.demo.samples import sample_audio, sample_photo
from tests.fakes.shop_fixtures import Shop

ROOT = Path(__file__).resolve().parents[2]


def healer(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "healer", *args], env=dict(env, COLUMNS="200"),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_complete_runs_each_remaining_step_in_the_foreground(shop: Shop, shop_env: dict[str, str]) -> None:
    order_id = shop.paid_order(queued=False)

    result = healer(shop_env, "orders", "complete", str(order_id))

    assert result.returncode == 0, result.stderr
    for step in ("verify_payment", "migrate_files", "render", "email"):
        assert step in result.stdout
    assert f"order {order_id}: completed" in result.stdout
    assert shop.order(order_id).status == OrderStatus.COMPLETED.value
    assert "testing-secret-key-never-logged" not in result.stdout + result.stderr


def test_complete_reports_a_failing_step_and_exits_1(shop: Shop, shop_env: dict[str, str]) -> None:
    order_id = shop.paid_order(queued=False)
    shop.sendgrid.set_key_valid(False)

    result = healer(shop_env, "orders", "complete", str(order_id))

    assert result.returncode == 1
    assert "email_auth" in result.stdout
    assert shop.order(order_id).status == OrderStatus.PDF_RENDERED.value


def test_show_prints_the_story_and_json(shop: Shop, shop_env: dict[str, str]) -> None:
    order_id = shop.paid_order()
    healer(shop_env, "orders", "complete", str(order_id))

    text = healer(shop_env, "orders", "show", str(order_id))
    as_json = json.loads(healer(shop_env, "orders", "show", str(order_id), "--json").stdout)

    assert "status completed" in text.stdout and "Download email sent to" in text.stdout
    assert [e["step"] for e in as_json["events"]] == ["verify_payment", "migrate_files", "render", "email"]


def test_list_filters_and_retry_all_requeues_needs_attention(shop: Shop, shop_env: dict[str, str]) -> None:
    broken = [shop.paid_order(status="needs_attention", last_error_step="email", last_error_class="email_auth")
              for _ in range(2)]
    shop.paid_order()

    listed = json.loads(healer(shop_env, "orders", "list", "--status", "needs_attention", "--json").stdout)
    assert sorted(o["id"] for o in listed) == sorted(map(str, broken))

    result = healer(shop_env, "orders", "retry", "--all")
    assert result.returncode == 0 and "2 order(s) re-queued" in result.stdout
    assert {shop.order(o).status for o in broken} == {OrderStatus.PDF_RENDERED.value}


def test_unknown_order_and_malformed_id_are_clear_errors(shop_env: dict[str, str]) -> None:
    unknown = healer(shop_env, "orders", "show", "6f1c2a9e-0000-4000-8000-000000000000")
    malformed = healer(shop_env, "orders", "show", "12; DROP TABLE orders")

    assert unknown.returncode == 1 and "no order " in unknown.stderr
    assert malformed.returncode == 64 and "is not an order id" in malformed.stderr


def test_render_writes_a_poster_from_files(shop_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "p.jpg").write_bytes(sample_photo(seed=2, size=(300, 400)))
    (tmp_path / "a.wav").write_bytes(sample_audio(seed=2, seconds=2.0))

    result = healer(shop_env, "render", "--template", "square-30x30", "--photo", str(tmp_path / "p.jpg"),
                    "--audio", str(tmp_path / "a.wav"), "--title", "Zoë", "--preview", "-o", str(tmp_path / "o.pdf"))
    missing = healer(shop_env, "render", "--template", "square-30x30", "--photo", str(tmp_path / "none.jpg"),
                     "--title", "x", "-o", str(tmp_path / "x.pdf"))

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o.pdf").read_bytes().startswith(b"%PDF")
    assert missing.returncode == 1 and "none.jpg" in missing.stderr


def test_retry_of_an_order_with_nothing_to_retry_says_so_and_exits_1(shop: Shop, shop_env: dict[str, str]) -> None:
    done = shop.paid_order()
    assert healer(shop_env, "orders", "complete", str(done)).returncode == 0
    refunded = shop.paid_order(status="refunded", queued=False)
    unpaid = shop.paid_order(payment_status="requires_payment_method", queued=False)
    stripe_calls = len(shop.stripe.requests)

    results = {order_id: healer(shop_env, "orders", "retry", str(order_id)) for order_id in (done, refunded, unpaid)}

    for order_id, result in results.items():
        assert result.returncode == 1, (order_id, result.stdout, result.stderr)
        assert "nothing to do" in result.stderr and "re-queued" not in result.stdout
    assert [shop.order(o).status for o in results] == ["completed", "refunded", "pending_payment"]
    assert shop.events(unpaid) == [] and shop.order(unpaid).next_attempt_at is None
    assert len(shop.stripe.requests) == stripe_calls


def test_retry_twice_requeues_once(shop: Shop, shop_env: dict[str, str]) -> None:
    order_id = shop.paid_order(status="needs_attention", last_error_step="email", queued=False)

    first, second = (healer(shop_env, "orders", "retry", str(order_id)) for _ in range(2))

    assert first.returncode == second.returncode == 0
    assert f"{order_id}: queued at pdf_rendered" in second.stdout
    assert [e.outcome for e in shop.events(order_id)] == ["requeued"]
