"""regenerate_waveform: a render that drew the wave from the audio (the shop's waveform image was
lost) has the PNG redrawn in a render process, under the render limits, and stored under the
order's permanent key, so the order's files are whole again."""

from __future__ import annotations

import logging
import tempfile
import uuid
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.errors import StepError, one_line
from fulfilment.models import Order
from fulfilment.steps import MAX_AUDIO_BYTES, permanent_key
from fulfilment.storage import ObjectStore
from healer.remediation.audit import Action, Audit, Result
from healer.render.pool import RenderPool

log = logging.getLogger(__name__)


class WaveformRestorer:
    """After a render without the shop's waveform image, writes one regenerated from the audio.

    The audio is the customer's: it is decoded in a render process under the render limits, never
    in the daemon. Without a `renderer`, the restorer keeps a one-process RenderPool of its own on
    the default limits (waveforms need neither assets nor scratch space); its process starts on
    the first waveform to redraw.
    """

    def __init__(
        self, sessions: sessionmaker[Session], store: ObjectStore, audit: Audit, renderer: RenderPool | None = None
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.audit = audit
        self.renderer = renderer or RenderPool(Path(), 1, Path(tempfile.gettempdir()))

    def after_render(self, order_id: uuid.UUID) -> None:
        try:
            with self.sessions() as session:
                order = session.get(Order, order_id)
        except SQLAlchemyError as error:
            log.warning("Waveform of order %s not checked: %s", order_id, one_line(error))
            return
        if order is None or not order.waveform_key or not order.audio_key:
            return  # no waveform was ever uploaded: nothing was lost
        key = permanent_key(order.id, "waveform", order.waveform_key)
        audio_key = permanent_key(order.id, "audio", order.audio_key)
        reason = "the render ran without the order's waveform image (lost or expired): drew it from the audio"
        try:
            if self.store.exists(key):
                return
            if self.audit.dry_run:
                self.audit.record(Action.REGENERATE_WAVEFORM, str(order_id), reason, Result.DRY_RUN,
                                  f"would write {key} from {audio_key}")
                return
            png = self.renderer.waveform_png(self.store.get(audio_key, MAX_AUDIO_BYTES), audio_key)
            self.store.put(key, png, "image/png")
        except StepError as error:
            self.audit.record(Action.REGENERATE_WAVEFORM, str(order_id), reason, Result.FAILURE,
                              f"{error.error_class}: {error.message}")
        else:
            self.audit.record(Action.REGENERATE_WAVEFORM, str(order_id), reason, Result.SUCCESS,
                              f"wrote {key} ({len(png)} bytes) from {audio_key}")

    def shutdown(self) -> None:
        self.renderer.shutdown()
