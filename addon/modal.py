"""The one way our long operators start and run: blocking where no window can run a modal (background,
scripts), otherwise modal with a timer so Blender stays responsive and Esc cancels."""

from __future__ import annotations

import bpy


class BlockingOrModal:
    """Mixin. The operator provides:
      execute(context)         the blocking run, to the end;
      _begin(context)          start the work and its timer: {"RUNNING_MODAL"}, or a refusal;
      _request_cancel()        Esc: ask the work to stop (it ends through _advance as usual);
      _advance(context)        on each timer tick: take in the work's news; True once it has ended;
      _end_modal(context)      remove the timer (and what _begin showed);
      _finish(context)         conclude the ended work: the operator's result;
      cancel(context)          Blender ends the modal (quit, file load, window closed)."""

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        result = self._begin(context)
        if result == {"RUNNING_MODAL"}:
            context.window_manager.modal_handler_add(self)
        return result

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._request_cancel()
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if not self._advance(context):
            return {"PASS_THROUGH"}  # other handlers' timers must still reach them
        self._end_modal(context)
        return self._finish(context)
