"""What a customer sees of their order: status, a sentence in their words, timestamps and, once
it is ready, the download link. Never error text, object keys, paths, hosts or worker ids: those
are for operators (healer.orders.OrderView on the operator listener)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from fulfilment.models import Order, OrderStatus

MESSAGES: dict[OrderStatus, str] = {
    OrderStatus.PENDING_PAYMENT: "We are waiting for your payment to be confirmed.",
    OrderStatus.PAID: "Your payment is confirmed. We are preparing your poster.",
    OrderStatus.FILES_MIGRATED: "Your payment is confirmed. We are preparing your poster.",
    OrderStatus.PDF_RENDERED: "Your poster is ready; we are sending you the download link by email.",
    OrderStatus.COMPLETED: "Your poster is ready. We have emailed you the download link.",
    OrderStatus.NEEDS_ATTENTION: "Your poster is taking longer than usual. We are on it and will email you.",
    OrderStatus.REFUNDED: "This order was refunded.",
}


class CustomerOrder(BaseModel):
    """The customer's view of their order (`GET /api/orders/{order_id}` on the public listener)."""

    order_id: str
    status: OrderStatus
    message: str
    created_at: datetime
    paid_at: datetime | None
    completed_at: datetime | None
    download_url: str | None


class CompletionAccepted(BaseModel):
    """`complete` (202) and the admin's `retry` (202): the order and the status it is queued at."""

    order_id: str
    status: OrderStatus


def customer_order(order: Order, public_base_url: str) -> CustomerOrder:
    status = order.status
    link = None
    if status is OrderStatus.COMPLETED and order.download_token:
        link = f"{public_base_url.rstrip('/')}/download/{order.download_token}"
    return CustomerOrder(
        order_id=str(order.id),
        status=status,
        message=MESSAGES[status],
        created_at=order.created_at,
        paid_at=order.paid_at,
        completed_at=order.completed_at,
        download_url=link,
    )
