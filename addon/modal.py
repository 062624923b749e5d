"""The one way our long operators start: blocking where no window can run a modal (background, scripts),
otherwise modal with a timer so Blender stays responsive and Esc cancels."""

from __future__ import annotations

import bpy


class BlockingOrModal:
    """Mixin: the operator provides execute() (blocking run) and _begin(context) (start the job and its
    timer, returning {"RUNNING_MODAL"} or a refusal)."""

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        result = self._begin(context)
        if result == {"RUNNING_MODAL"}:
            context.window_manager.modal_handler_add(self)
        return result
