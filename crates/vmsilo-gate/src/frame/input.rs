//! Input: events about the gate's surfaces are the gate's. Keyboard focus on the frame is
//! focus on the guest surface; pointer and touch on the frame never reach the guest; a left
//! press on the band moves the window.

use super::*;

pub(super) struct GuestSeat {
    pub(super) sh: Rc<Shared>,
}

impl WlSeatHandler for GuestSeat {
    fn handle_get_pointer(&mut self, slf: &Rc<WlSeat>, id: &Rc<WlPointer>) {
        slf.send_get_pointer(id);
        id.set_handler(GuestPointer {
            sh: self.sh.clone(),
            seat: slf.clone(),
            on_frame: None,
        });
    }

    fn handle_get_keyboard(&mut self, slf: &Rc<WlSeat>, id: &Rc<WlKeyboard>) {
        slf.send_get_keyboard(id);
        id.set_handler(GuestKeyboard {
            sh: self.sh.clone(),
        });
    }

    fn handle_get_touch(&mut self, slf: &Rc<WlSeat>, id: &Rc<WlTouch>) {
        slf.send_get_touch(id);
        id.set_handler(GuestTouch {
            sh: self.sh.clone(),
            frame_points: Vec::new(),
        });
    }
}

pub(super) struct GuestKeyboard {
    pub(super) sh: Rc<Shared>,
}

impl GuestKeyboard {
    /// The surface the guest is told about: its own for the frame's, none for other gate
    /// surfaces.
    pub(super) fn target(&self, surface: &Rc<WlSurface>) -> Option<Rc<WlSurface>> {
        match self.sh.window_of_gate_surface(surface) {
            Some((w, _)) => Some(w.guest_surface.clone()),
            None => surface.client().is_some().then(|| surface.clone()),
        }
    }
}

impl WlKeyboardHandler for GuestKeyboard {
    fn handle_enter(
        &mut self,
        slf: &Rc<WlKeyboard>,
        serial: u32,
        surface: &Rc<WlSurface>,
        keys: &[u8],
    ) {
        if let Some(s) = self.target(surface) {
            // The VM's selection is delivered to the focused client only, just before focus.
            crate::datadev::keyboard_focus(true);
            slf.send_enter(serial, &s, keys);
        }
    }

    fn handle_leave(&mut self, slf: &Rc<WlKeyboard>, serial: u32, surface: &Rc<WlSurface>) {
        if let Some(s) = self.target(surface) {
            slf.send_leave(serial, &s);
            crate::datadev::keyboard_focus(false);
        }
    }
}

pub(super) struct GuestPointer {
    pub(super) sh: Rc<Shared>,
    pub(super) seat: Rc<WlSeat>,
    /// The window whose frame the pointer is on, and whether on the band.
    pub(super) on_frame: Option<(Weak<Window>, bool)>,
}

impl WlPointerHandler for GuestPointer {
    fn handle_enter(
        &mut self,
        slf: &Rc<WlPointer>,
        serial: u32,
        surface: &Rc<WlSurface>,
        x: Fixed,
        y: Fixed,
    ) {
        if let Some((w, band)) = self.sh.window_of_gate_surface(surface) {
            self.on_frame = Some((Rc::downgrade(&w), band));
            return;
        }
        self.on_frame = None;
        if surface.client().is_some() {
            slf.send_enter(serial, surface, x, y);
        }
    }

    fn handle_leave(&mut self, slf: &Rc<WlPointer>, serial: u32, surface: &Rc<WlSurface>) {
        if self.sh.window_of_gate_surface(surface).is_some() {
            self.on_frame = None;
            return;
        }
        if surface.client().is_some() {
            slf.send_leave(serial, surface);
        }
    }

    fn handle_motion(&mut self, slf: &Rc<WlPointer>, time: u32, x: Fixed, y: Fixed) {
        if self.on_frame.is_none() {
            slf.send_motion(time, x, y);
        }
    }

    fn handle_button(
        &mut self,
        slf: &Rc<WlPointer>,
        serial: u32,
        time: u32,
        button: u32,
        state: WlPointerButtonState,
    ) {
        match &self.on_frame {
            None => slf.send_button(serial, time, button, state),
            Some((w, band)) => {
                if *band
                    && button == BTN_LEFT
                    && state == WlPointerButtonState::PRESSED
                    && let Some(w) = w.upgrade()
                {
                    w.tf.send_move(&self.seat, serial);
                }
            }
        }
    }

    fn handle_axis(&mut self, slf: &Rc<WlPointer>, time: u32, axis: WlPointerAxis, value: Fixed) {
        if self.on_frame.is_none() {
            slf.send_axis(time, axis, value);
        }
    }

    fn handle_frame(&mut self, slf: &Rc<WlPointer>) {
        if self.on_frame.is_none() {
            slf.send_frame();
        }
    }

    fn handle_axis_source(&mut self, slf: &Rc<WlPointer>, s: WlPointerAxisSource) {
        if self.on_frame.is_none() {
            slf.send_axis_source(s);
        }
    }

    fn handle_axis_stop(&mut self, slf: &Rc<WlPointer>, time: u32, axis: WlPointerAxis) {
        if self.on_frame.is_none() {
            slf.send_axis_stop(time, axis);
        }
    }

    fn handle_axis_discrete(&mut self, slf: &Rc<WlPointer>, axis: WlPointerAxis, d: i32) {
        if self.on_frame.is_none() {
            slf.send_axis_discrete(axis, d);
        }
    }

    fn handle_axis_value120(&mut self, slf: &Rc<WlPointer>, axis: WlPointerAxis, v: i32) {
        if self.on_frame.is_none() {
            slf.send_axis_value120(axis, v);
        }
    }

    fn handle_axis_relative_direction(
        &mut self,
        slf: &Rc<WlPointer>,
        axis: WlPointerAxis,
        d: WlPointerAxisRelativeDirection,
    ) {
        if self.on_frame.is_none() {
            slf.send_axis_relative_direction(axis, d);
        }
    }
}

pub(super) struct GuestTouch {
    pub(super) sh: Rc<Shared>,
    /// Touch points that went down on a frame (bounded: a touch screen has few).
    pub(super) frame_points: Vec<i32>,
}

impl WlTouchHandler for GuestTouch {
    fn handle_down(
        &mut self,
        slf: &Rc<WlTouch>,
        serial: u32,
        time: u32,
        surface: &Rc<WlSurface>,
        id: i32,
        x: Fixed,
        y: Fixed,
    ) {
        if self.sh.window_of_gate_surface(surface).is_some() {
            if self.frame_points.len() < 64 {
                self.frame_points.push(id);
            }
            return;
        }
        if surface.client().is_some() {
            slf.send_down(serial, time, surface, id, x, y);
        }
    }

    fn handle_up(&mut self, slf: &Rc<WlTouch>, serial: u32, time: u32, id: i32) {
        if let Some(i) = self.frame_points.iter().position(|&p| p == id) {
            self.frame_points.swap_remove(i);
            return;
        }
        slf.send_up(serial, time, id);
    }

    fn handle_motion(&mut self, slf: &Rc<WlTouch>, time: u32, id: i32, x: Fixed, y: Fixed) {
        if !self.frame_points.contains(&id) {
            slf.send_motion(time, id, x, y);
        }
    }

    fn handle_shape(&mut self, slf: &Rc<WlTouch>, id: i32, major: Fixed, minor: Fixed) {
        if !self.frame_points.contains(&id) {
            slf.send_shape(id, major, minor);
        }
    }

    fn handle_orientation(&mut self, slf: &Rc<WlTouch>, id: i32, orientation: Fixed) {
        if !self.frame_points.contains(&id) {
            slf.send_orientation(id, orientation);
        }
    }

    fn handle_cancel(&mut self, slf: &Rc<WlTouch>) {
        self.frame_points.clear();
        slf.send_cancel();
    }
}

/// The surface the compositor knows a guest window by: the frame's toplevel surface for a
/// surface in a framed window's tree, the surface itself otherwise. For requests whose
/// surface must be the focused toplevel (activation, shortcut inhibitors).
pub(super) fn compositor_surface_for(surface: &Rc<WlSurface>) -> Rc<WlSurface> {
    match info_of(surface).and_then(|i| i.window()) {
        Some(w) if !w.destroyed.get() => w.f.clone(),
        _ => surface.clone(),
    }
}

pub(super) struct GuestTextInputManager {
    pub(super) sh: Rc<Shared>,
}

impl ZwpTextInputManagerV3Handler for GuestTextInputManager {
    fn handle_get_text_input(
        &mut self,
        slf: &Rc<ZwpTextInputManagerV3>,
        id: &Rc<ZwpTextInputV3>,
        seat: &Rc<WlSeat>,
    ) {
        slf.send_get_text_input(id, seat);
        id.set_handler(GuestTextInput {
            kb: GuestKeyboard {
                sh: self.sh.clone(),
            },
        });
    }
}

/// Text input focus follows keyboard focus, which the compositor gives the frame.
pub(super) struct GuestTextInput {
    kb: GuestKeyboard,
}

impl ZwpTextInputV3Handler for GuestTextInput {
    fn handle_enter(&mut self, slf: &Rc<ZwpTextInputV3>, surface: &Rc<WlSurface>) {
        if let Some(s) = self.kb.target(surface) {
            slf.send_enter(&s);
        }
    }

    fn handle_leave(&mut self, slf: &Rc<ZwpTextInputV3>, surface: &Rc<WlSurface>) {
        if let Some(s) = self.kb.target(surface) {
            slf.send_leave(&s);
        }
    }
}

pub(super) struct GuestActivation {
    pub(super) sh: Rc<Shared>,
}

impl XdgActivationV1Handler for GuestActivation {
    fn handle_get_activation_token(
        &mut self,
        slf: &Rc<XdgActivationV1>,
        id: &Rc<XdgActivationTokenV1>,
    ) {
        slf.send_get_activation_token(id);
        id.set_handler(GuestActivationToken {
            sh: self.sh.clone(),
        });
    }

    fn handle_activate(&mut self, slf: &Rc<XdgActivationV1>, token: &str, surface: &Rc<WlSurface>) {
        slf.send_activate(token, &compositor_surface_for(surface));
    }
}

pub(super) struct GuestActivationToken {
    sh: Rc<Shared>,
}

impl XdgActivationTokenV1Handler for GuestActivationToken {
    fn handle_set_app_id(&mut self, slf: &Rc<XdgActivationTokenV1>, app_id: &str) {
        slf.send_set_app_id(&self.sh.identity.app_id(app_id));
    }

    fn handle_set_surface(&mut self, slf: &Rc<XdgActivationTokenV1>, surface: &Rc<WlSurface>) {
        slf.send_set_surface(&compositor_surface_for(surface));
    }
}

pub(super) struct GuestShortcutsInhibit;

impl ZwpKeyboardShortcutsInhibitManagerV1Handler for GuestShortcutsInhibit {
    fn handle_inhibit_shortcuts(
        &mut self,
        slf: &Rc<ZwpKeyboardShortcutsInhibitManagerV1>,
        id: &Rc<ZwpKeyboardShortcutsInhibitorV1>,
        surface: &Rc<WlSurface>,
        seat: &Rc<WlSeat>,
    ) {
        slf.send_inhibit_shortcuts(id, &compositor_surface_for(surface), seat);
    }
}
