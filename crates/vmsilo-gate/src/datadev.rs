//! The VM's own clipboard: every client's `wl_data_device_manager` is served by the gate and
//! never reaches the compositor, so guest selections stay in the VM and the host's never
//! reach it.
//!
//! The selection is VM-wide. Each client is served by its own child process, so the children
//! share it through the parent: [`Hub`] (sans-IO, in the parent) holds the current
//! [`Selection`] (owner child, MIME types) and routes a paste (`receive(mime, fd)`) to the
//! owner child, whose [`DataDev`] passes it to the owning `wl_data_source` as `send(mime, fd)`.
//! The child ⇄ parent messages are [`Msg`], one per `SOCK_SEQPACKET` datagram, with at most
//! one fd: the framing and transport are vmsilo-clipd's ([`vmsilo_clipd::wire`],
//! [`vmsilo_clipd::seqpacket`]), shared by every clipboard seam; the message set is this
//! module's.
//!
//! As a compositor does, the gate sends a client the selection only while it has keyboard
//! focus: immediately before `wl_keyboard.enter`, and on every change while focused (clients
//! such as wl-paste crash on a selection before focus). Focus is seen by the gate's
//! `wl_seat`/`wl_keyboard` handlers ([`Seat`], [`Keyboard`]) or, where the frame installs its
//! own, by the frame calling [`keyboard_focus`]. Focus is tracked from the client's first
//! `wl_seat` bind on; a client without a seat counts as focused (it could not get focus). Drag-and-drop (`start_drag`) is
//! not supported: the drag source gets `cancelled`, nothing is dragged. Primary selection is
//! not offered at all.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use wl_proxy::object::{Object, ObjectCoreApi, ObjectUtils};
use wl_proxy::protocols::wayland::wl_data_device::{WlDataDevice, WlDataDeviceHandler};
use wl_proxy::protocols::wayland::wl_data_device_manager::{
    WlDataDeviceManager, WlDataDeviceManagerHandler,
};
use wl_proxy::protocols::wayland::wl_data_offer::{WlDataOffer, WlDataOfferHandler};
use wl_proxy::protocols::wayland::wl_data_source::{WlDataSource, WlDataSourceHandler};
use wl_proxy::protocols::wayland::wl_keyboard::{WlKeyboard, WlKeyboardHandler};
use wl_proxy::protocols::wayland::wl_seat::{WlSeat, WlSeatHandler};

use wl_proxy::protocols::wayland::wl_surface::WlSurface;

use vmsilo_clipd::wire::{self, Reader};
pub use vmsilo_clipd::wire::{BadMsg, Message};

/// Most MIME types a selection carries (more are ignored).
pub const MAX_MIMES: usize = 64;
/// Longest MIME type in bytes (longer ones are ignored).
pub const MAX_MIME_BYTES: usize = 256;
/// Largest [`Msg`] datagram.
pub const MAX_MSG_BYTES: usize = 32 + MAX_MIMES * (2 + MAX_MIME_BYTES);

/// A VM-wide selection as the parent knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The MIME types on offer.
    pub mimes: Vec<String>,
    /// Who owns it.
    pub source: Source,
}

/// The owner of a selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// The child process (connection) that owns it.
    pub child: u64,
    /// The child's own serial of the `wl_data_source`.
    pub serial: u64,
}

/// A child ⇄ parent message. `Receive` and `Send` carry the pipe fd beside the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Child → parent: a client of mine set this selection (`serial` is my source's).
    SetSelection {
        /// The child's serial for the source.
        serial: u64,
        /// MIME types.
        mimes: Vec<String>,
    },
    /// Child → parent: my selection with this serial is gone (cleared or source destroyed).
    ClearSelection {
        /// The child's serial for the source.
        serial: u64,
    },
    /// Child → parent: a client of mine pastes `mime` of selection `generation` (+ fd).
    Receive {
        /// The generation the offer was made for.
        generation: u64,
        /// The MIME type.
        mime: String,
    },
    /// Parent → child: the VM-wide selection is now `mimes` (empty: none). `own` tells the
    /// owner child which of its sources it is.
    Selection {
        /// Increases on every change.
        generation: u64,
        /// MIME types; empty means no selection.
        mimes: Vec<String>,
        /// The receiving child's source serial, if it owns the selection.
        own: Option<u64>,
    },
    /// Parent → owner child: write `mime` of your source `serial` into the fd.
    Send {
        /// The child's serial for the source.
        serial: u64,
        /// The MIME type.
        mime: String,
    },
    /// Parent → old owner child: your source `serial` was replaced.
    Cancel {
        /// The child's serial for the source.
        serial: u64,
    },
    /// Child → parent: the user pressed the global clipboard's copy (`true`) or paste
    /// (`false`) chord in one of my client's windows (for vmsilo-clipd; see `clip`).
    Chord {
        /// Copy, else paste.
        copy: bool,
    },
    /// Parent → child: the label band of every window shows this clipboard notice (empty:
    /// the VM name alone again). See `notice`.
    Notice {
        /// The notice (printable ASCII, at most `notice::MAX_CHARS`).
        text: String,
    },
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    wire::put_str(out, s, MAX_MIME_BYTES);
}

fn put_mimes(out: &mut Vec<u8>, m: &[String]) {
    wire::put_list(out, m, MAX_MIMES, MAX_MIME_BYTES);
}

/// The child ⇄ parent messages, encoded as [`wire`] encodes every clipboard seam.
impl Message for Msg {
    const MAX_BYTES: usize = MAX_MSG_BYTES;

    /// The datagram bytes (MIME lists are cut to [`MAX_MIMES`], strings to
    /// [`MAX_MIME_BYTES`]).
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Msg::SetSelection { serial, mimes: m } => {
                out.push(1);
                wire::put_u64(&mut out, *serial);
                put_mimes(&mut out, m);
            }
            Msg::ClearSelection { serial } => {
                out.push(2);
                wire::put_u64(&mut out, *serial);
            }
            Msg::Receive { generation, mime } => {
                out.push(3);
                wire::put_u64(&mut out, *generation);
                put_str(&mut out, mime);
            }
            Msg::Selection {
                generation,
                mimes: m,
                own,
            } => {
                out.push(4);
                wire::put_u64(&mut out, *generation);
                wire::put_bool(&mut out, own.is_some());
                if let Some(serial) = own {
                    wire::put_u64(&mut out, *serial);
                }
                put_mimes(&mut out, m);
            }
            Msg::Send { serial, mime } => {
                out.push(5);
                wire::put_u64(&mut out, *serial);
                put_str(&mut out, mime);
            }
            Msg::Cancel { serial } => {
                out.push(6);
                wire::put_u64(&mut out, *serial);
            }
            Msg::Chord { copy } => {
                out.push(7);
                wire::put_bool(&mut out, *copy);
            }
            Msg::Notice { text } => {
                out.push(8);
                put_str(&mut out, text);
            }
        }
        out
    }

    fn decode(b: &[u8]) -> Result<Msg, BadMsg> {
        let mut r = Reader::new(b);
        let msg = match r.u8()? {
            1 => Msg::SetSelection {
                serial: r.u64()?,
                mimes: r.list(MAX_MIMES, MAX_MIME_BYTES)?,
            },
            2 => Msg::ClearSelection { serial: r.u64()? },
            3 => Msg::Receive {
                generation: r.u64()?,
                mime: r.str(MAX_MIME_BYTES)?,
            },
            4 => Msg::Selection {
                generation: r.u64()?,
                own: match r.bool()? {
                    false => None,
                    true => Some(r.u64()?),
                },
                mimes: r.list(MAX_MIMES, MAX_MIME_BYTES)?,
            },
            5 => Msg::Send {
                serial: r.u64()?,
                mime: r.str(MAX_MIME_BYTES)?,
            },
            6 => Msg::Cancel { serial: r.u64()? },
            7 => Msg::Chord { copy: r.bool()? },
            8 => Msg::Notice {
                text: r.str(MAX_MIME_BYTES)?,
            },
            _ => return Err(BadMsg("unknown tag")),
        };
        r.end()?;
        Ok(msg)
    }

    fn has_fd(&self) -> bool {
        matches!(self, Msg::Receive { .. } | Msg::Send { .. })
    }
}

/// What the parent must send after a [`Hub`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// Send `msg` to `child`.
    To(u64, Msg),
}

/// The owner "child" id of a selection the gate itself holds (content pasted from the global
/// clipboard by vmsilo-clipd); real children count from 1.
pub const GATE: u64 = 0;

/// The parent's VM-wide selection (sans-IO).
#[derive(Debug, Default)]
pub struct Hub {
    current: Option<Selection>,
    generation: u64,
    children: Vec<u64>,
}

impl Hub {
    /// The current selection.
    pub fn current(&self) -> Option<&Selection> {
        self.current.as_ref()
    }

    fn selection_for(&self, child: u64) -> Msg {
        let (mimes, own) = match &self.current {
            Some(s) => (
                s.mimes.clone(),
                (s.source.child == child).then_some(s.source.serial),
            ),
            None => (Vec::new(), None),
        };
        Msg::Selection {
            generation: self.generation,
            mimes,
            own,
        }
    }

    fn broadcast(&self) -> Vec<Out> {
        self.children
            .iter()
            .map(|&c| Out::To(c, self.selection_for(c)))
            .collect()
    }

    /// The gate itself takes the selection (a paste from the global clipboard), as its
    /// source `serial` with these MIME types: the previous owner is cancelled and every
    /// child is told. Pastes of it come back as `Out::To(GATE, Msg::Send { .. })`.
    pub fn set_gate_selection(&mut self, serial: u64, mimes: Vec<String>) -> Vec<Out> {
        self.handle(GATE, Msg::SetSelection { serial, mimes })
    }

    /// Where a read of the current selection as `mime` goes (the global clipboard's copy):
    /// `Out::To(owner, Msg::Send { .. })`, to be sent with the pipe's write end; `None` if
    /// there is no selection or it does not offer `mime`.
    pub fn fetch(&self, mime: &str) -> Option<Out> {
        let s = self.current.as_ref()?;
        s.mimes.iter().any(|m| m == mime).then(|| {
            Out::To(
                s.source.child,
                Msg::Send {
                    serial: s.source.serial,
                    mime: mime.to_string(),
                },
            )
        })
    }

    /// A new child: it is told the current selection.
    pub fn child_added(&mut self, child: u64) -> Vec<Out> {
        if !self.children.contains(&child) {
            self.children.push(child);
        }
        vec![Out::To(child, self.selection_for(child))]
    }

    /// A child is gone: its selection goes with it.
    pub fn child_gone(&mut self, child: u64) -> Vec<Out> {
        self.children.retain(|&c| c != child);
        if self.current.as_ref().map(|s| s.source.child) == Some(child) {
            self.current = None;
            self.generation += 1;
            return self.broadcast();
        }
        Vec::new()
    }

    /// A message from `child`. Returns the messages to send and, for `Receive`, where the fd
    /// goes (`Some((owner, Msg::Send))` is among the outputs; the caller attaches the fd to
    /// the `Send`).
    pub fn handle(&mut self, child: u64, msg: Msg) -> Vec<Out> {
        match msg {
            Msg::SetSelection { serial, mut mimes } => {
                mimes.truncate(MAX_MIMES);
                mimes.retain(|m| m.len() <= MAX_MIME_BYTES);
                let mut out = Vec::new();
                if let Some(old) = &self.current
                    && old.source != (Source { child, serial })
                {
                    out.push(Out::To(
                        old.source.child,
                        Msg::Cancel {
                            serial: old.source.serial,
                        },
                    ));
                }
                self.current = Some(Selection {
                    mimes,
                    source: Source { child, serial },
                });
                self.generation += 1;
                out.extend(self.broadcast());
                out
            }
            Msg::ClearSelection { serial } => {
                if self.current.as_ref().map(|s| s.source) == Some(Source { child, serial }) {
                    self.current = None;
                    self.generation += 1;
                    return self.broadcast();
                }
                Vec::new()
            }
            Msg::Receive { generation, mime } => match &self.current {
                Some(s) if generation == self.generation && s.mimes.contains(&mime) => {
                    vec![Out::To(
                        s.source.child,
                        Msg::Send {
                            serial: s.source.serial,
                            mime,
                        },
                    )]
                }
                _ => Vec::new(),
            },
            // Parent → child messages are not accepted from a child; chords go to clipd, not
            // to the hub.
            Msg::Selection { .. }
            | Msg::Send { .. }
            | Msg::Cancel { .. }
            | Msg::Chord { .. }
            | Msg::Notice { .. } => Vec::new(),
        }
    }
}

/// How a child's [`DataDev`] talks to the parent's [`Hub`].
pub trait Link {
    /// Sends `msg` (with `fd` for `Receive`). Errors are logged by the implementation.
    fn send(&self, msg: &Msg, fd: Option<&OwnedFd>);
}

/// The VM-wide selection as one child sees it.
#[derive(Debug, Clone)]
enum Current {
    None,
    /// One of this client's sources.
    Own {
        serial: u64,
    },
    /// Another client's, via the parent.
    Remote {
        generation: u64,
        mimes: Vec<String>,
    },
}

struct SourceState {
    obj: Rc<WlDataSource>,
    mimes: Vec<String>,
    used: bool,
}

struct Inner {
    devices: Vec<Rc<WlDataDevice>>,
    sources: HashMap<u64, SourceState>,
    next_serial: u64,
    current: Current,
    /// The generation of the current selection as the offers know it.
    generation: u64,
}

/// One client's clipboard state (in its child process).
pub struct DataDev {
    inner: RefCell<Inner>,
    link: Option<Box<dyn Link>>,
    /// `wl_keyboard`s of this client that have focus.
    focused: Cell<u32>,
    /// Whether keyboard focus is tracked (else the client counts as focused).
    tracking: Cell<bool>,
}

thread_local! {
    /// The clipboard of the client this process serves (one client per process), for the
    /// wl_keyboard handlers that report focus.
    static FOCUS_SINK: RefCell<std::rc::Weak<DataDev>> = const { RefCell::new(std::rc::Weak::new()) };
}

/// Makes `dd` the clipboard that [`keyboard_focus`] and [`track_keyboard_focus`] report to.
pub fn set_focus_sink(dd: &Rc<DataDev>) {
    FOCUS_SINK.with(|s| *s.borrow_mut() = Rc::downgrade(dd));
}

fn focus_sink() -> Option<Rc<DataDev>> {
    FOCUS_SINK.with(|s| s.borrow().upgrade())
}

/// A `wl_keyboard` of the client got (`true`) or lost keyboard focus. Call it for `enter`
/// *before* forwarding the event (the selection is sent immediately before focus), for
/// `leave` after. For `wl_keyboard` handlers that replace the gate's [`Keyboard`].
pub fn keyboard_focus(focused: bool) {
    if let Some(dd) = focus_sink() {
        dd.keyboard_focus(focused);
    }
}

/// From now on the client gets the selection only with keyboard focus (the registry turns it
/// on when the client binds a `wl_seat`).
pub fn track_keyboard_focus() {
    if let Some(dd) = focus_sink() {
        dd.tracking.set(true);
    }
}

impl DataDev {
    /// A data device service; with `link` the selection is shared with the VM's other
    /// clients through the parent, without it only within this client.
    pub fn new(link: Option<Box<dyn Link>>) -> Rc<Self> {
        Rc::new(Self {
            inner: RefCell::new(Inner {
                devices: Vec::new(),
                sources: HashMap::new(),
                next_serial: 1,
                current: Current::None,
                generation: 0,
            }),
            link,
            focused: Cell::new(0),
            tracking: Cell::new(false),
        })
    }

    /// From now on the client gets the selection only with keyboard focus.
    pub fn track_focus(&self) {
        self.tracking.set(true);
    }

    /// A `wl_keyboard` of the client got or lost focus. The first one to get it makes the
    /// client focused: it gets the current selection.
    pub fn keyboard_focus(self: &Rc<Self>, focused: bool) {
        self.tracking.set(true);
        let n = self.focused.get();
        if focused {
            self.focused.set(n.saturating_add(1));
            if n == 0 {
                self.broadcast_local();
            }
        } else {
            self.focused.set(n.saturating_sub(1));
        }
    }

    /// Serves a client's `wl_data_device_manager` (bound from the gate's synthetic global).
    pub fn serve_manager(self: &Rc<Self>, manager: &Rc<WlDataDeviceManager>) {
        manager.set_forward_to_server(false);
        manager.set_handler(Manager { dd: self.clone() });
    }

    fn mimes_of_current(&self) -> Option<Vec<String>> {
        let inner = self.inner.borrow();
        match &inner.current {
            Current::None => None,
            Current::Own { serial } => inner.sources.get(serial).map(|s| s.mimes.clone()),
            Current::Remote { mimes, .. } => Some(mimes.clone()),
        }
    }

    /// Sends the current selection to `device` (a new offer, or null), if the client has
    /// keyboard focus.
    fn offer_to(self: &Rc<Self>, device: &Rc<WlDataDevice>) {
        if device.client().is_none() || (self.tracking.get() && self.focused.get() == 0) {
            return;
        }
        match self.mimes_of_current() {
            Some(mimes) if !mimes.is_empty() => {
                let generation = self.inner.borrow().generation;
                let offer = device.new_send_data_offer();
                offer.set_forward_to_server(false);
                offer.set_handler(Offer {
                    dd: self.clone(),
                    generation,
                });
                for m in &mimes {
                    offer.send_offer(m);
                }
                device.send_selection(Some(&offer));
            }
            _ => device.send_selection(None),
        }
    }

    fn broadcast_local(self: &Rc<Self>) {
        let devices = self.inner.borrow().devices.clone();
        for d in &devices {
            self.offer_to(d);
        }
    }

    fn set_own(self: &Rc<Self>, serial: u64) {
        let (previous, mimes) = {
            let mut inner = self.inner.borrow_mut();
            let Some(src) = inner.sources.get_mut(&serial) else {
                return;
            };
            src.used = true;
            let mimes = src.mimes.clone();
            inner.generation += 1;
            let previous = std::mem::replace(&mut inner.current, Current::Own { serial });
            (previous, mimes)
        };
        if let Current::Own { serial: old } = previous
            && old != serial
        {
            self.cancel(old);
        }
        if let Some(link) = &self.link {
            link.send(&Msg::SetSelection { serial, mimes }, None);
        }
        self.broadcast_local();
    }

    fn clear_own(self: &Rc<Self>, serial: u64) {
        {
            let mut inner = self.inner.borrow_mut();
            match inner.current {
                Current::Own { serial: s } if s == serial => {
                    inner.current = Current::None;
                    inner.generation += 1;
                }
                _ => return,
            }
        }
        if let Some(link) = &self.link {
            link.send(&Msg::ClearSelection { serial }, None);
        }
        self.broadcast_local();
    }

    fn cancel(&self, serial: u64) {
        let obj = self
            .inner
            .borrow()
            .sources
            .get(&serial)
            .map(|s| s.obj.clone());
        if let Some(obj) = obj {
            obj.send_cancelled();
        }
    }

    /// A message from the parent.
    pub fn handle_parent(self: &Rc<Self>, msg: Msg, fd: Option<OwnedFd>) {
        match msg {
            Msg::Selection {
                own: Some(serial), ..
            } => {
                // Our own selection, as the parent ordered it. Usually already current; after
                // a race with another client's selection (which the parent saw first) it is
                // made current again.
                {
                    let mut inner = self.inner.borrow_mut();
                    if matches!(inner.current, Current::Own { serial: s } if s == serial)
                        || !inner.sources.contains_key(&serial)
                    {
                        return;
                    }
                    inner.current = Current::Own { serial };
                    inner.generation += 1;
                }
                self.broadcast_local();
            }
            Msg::Selection {
                generation,
                mimes,
                own: None,
            } => {
                {
                    let mut inner = self.inner.borrow_mut();
                    inner.current = if mimes.is_empty() {
                        Current::None
                    } else {
                        Current::Remote { generation, mimes }
                    };
                    inner.generation += 1;
                }
                self.broadcast_local();
            }
            Msg::Send { serial, mime } => {
                let obj = {
                    let inner = self.inner.borrow();
                    inner
                        .sources
                        .get(&serial)
                        .filter(|s| s.mimes.contains(&mime))
                        .map(|s| s.obj.clone())
                };
                if let (Some(obj), Some(fd)) = (obj, fd) {
                    obj.send_send(&mime, &Rc::new(fd));
                }
            }
            Msg::Cancel { serial } => self.cancel(serial),
            Msg::SetSelection { .. }
            | Msg::ClearSelection { .. }
            | Msg::Receive { .. }
            | Msg::Chord { .. }
            | Msg::Notice { .. } => {}
        }
    }

    /// A paste from one of this client's offers.
    fn receive(&self, generation: u64, mime: &str, fd: &Rc<OwnedFd>) {
        let inner = self.inner.borrow();
        if generation != inner.generation {
            return;
        }
        match &inner.current {
            Current::Own { serial } => {
                if let Some(s) = inner.sources.get(serial)
                    && s.mimes.iter().any(|m| m == mime)
                {
                    s.obj.send_send(mime, fd);
                }
            }
            Current::Remote {
                generation: remote,
                mimes,
            } => {
                if mimes.iter().any(|m| m == mime)
                    && let Some(link) = &self.link
                {
                    link.send(
                        &Msg::Receive {
                            generation: *remote,
                            mime: mime.to_string(),
                        },
                        Some(fd),
                    );
                }
            }
            Current::None => {}
        }
    }
}

/// The gate's `wl_seat` handler: forwards everything, watches keyboards for focus.
#[derive(Debug)]
pub struct Seat {
    dd: Rc<DataDev>,
}

impl Seat {
    /// A handler telling `dd` about keyboard focus.
    pub fn new(dd: Rc<DataDev>) -> Self {
        Self { dd }
    }
}

impl WlSeatHandler for Seat {
    fn handle_get_keyboard(&mut self, slf: &Rc<WlSeat>, id: &Rc<WlKeyboard>) {
        slf.send_get_keyboard(id);
        id.set_handler(Keyboard {
            dd: self.dd.clone(),
        });
    }
}

/// The gate's `wl_keyboard` handler: forwards everything; the selection goes out right
/// before `enter`.
#[derive(Debug)]
pub struct Keyboard {
    dd: Rc<DataDev>,
}

impl WlKeyboardHandler for Keyboard {
    fn handle_enter(
        &mut self,
        slf: &Rc<WlKeyboard>,
        serial: u32,
        surface: &Rc<WlSurface>,
        keys: &[u8],
    ) {
        self.dd.keyboard_focus(true);
        slf.send_enter(serial, surface, keys);
    }

    fn handle_leave(&mut self, slf: &Rc<WlKeyboard>, serial: u32, surface: &Rc<WlSurface>) {
        slf.send_leave(serial, surface);
        self.dd.keyboard_focus(false);
    }
}

struct Manager {
    dd: Rc<DataDev>,
}

impl WlDataDeviceManagerHandler for Manager {
    fn handle_create_data_source(&mut self, _slf: &Rc<WlDataDeviceManager>, id: &Rc<WlDataSource>) {
        id.set_forward_to_server(false);
        let serial = {
            let mut inner = self.dd.inner.borrow_mut();
            let serial = inner.next_serial;
            inner.next_serial += 1;
            inner.sources.insert(
                serial,
                SourceState {
                    obj: id.clone(),
                    mimes: Vec::new(),
                    used: false,
                },
            );
            serial
        };
        id.set_handler(SourceH {
            dd: self.dd.clone(),
            serial,
        });
    }

    fn handle_get_data_device(
        &mut self,
        _slf: &Rc<WlDataDeviceManager>,
        id: &Rc<WlDataDevice>,
        _seat: &Rc<WlSeat>,
    ) {
        id.set_forward_to_server(false);
        id.set_handler(Device {
            dd: self.dd.clone(),
        });
        self.dd.inner.borrow_mut().devices.push(id.clone());
        self.dd.offer_to(id);
    }

    fn handle_release(&mut self, slf: &Rc<WlDataDeviceManager>) {
        slf.delete_id();
        slf.unset_handler();
    }
}

struct SourceH {
    dd: Rc<DataDev>,
    serial: u64,
}

impl WlDataSourceHandler for SourceH {
    fn handle_offer(&mut self, _slf: &Rc<WlDataSource>, mime_type: &str) {
        let mut inner = self.dd.inner.borrow_mut();
        if let Some(s) = inner.sources.get_mut(&self.serial)
            && !s.used
            && s.mimes.len() < MAX_MIMES
            && mime_type.len() <= MAX_MIME_BYTES
            && !s.mimes.iter().any(|m| m == mime_type)
        {
            s.mimes.push(mime_type.to_string());
        }
    }

    fn handle_destroy(&mut self, slf: &Rc<WlDataSource>) {
        self.dd.clear_own(self.serial);
        self.dd.inner.borrow_mut().sources.remove(&self.serial);
        slf.delete_id();
        slf.unset_handler();
    }

    fn handle_set_actions(
        &mut self,
        _slf: &Rc<WlDataSource>,
        _dnd_actions: wl_proxy::protocols::wayland::wl_data_device_manager::WlDataDeviceManagerDndAction,
    ) {
    }
}

struct Device {
    dd: Rc<DataDev>,
}

impl WlDataDeviceHandler for Device {
    fn handle_start_drag(
        &mut self,
        _slf: &Rc<WlDataDevice>,
        source: Option<&Rc<WlDataSource>>,
        _origin: &Rc<WlSurface>,
        _icon: Option<&Rc<WlSurface>>,
        _serial: u32,
    ) {
        // Drag-and-drop is not supported: the drag ends at once.
        if let Some(source) = source {
            source.send_cancelled();
        }
    }

    fn handle_set_selection(
        &mut self,
        _slf: &Rc<WlDataDevice>,
        source: Option<&Rc<WlDataSource>>,
        _serial: u32,
    ) {
        match source {
            None => {
                let current = self.dd.inner.borrow().current.clone();
                if let Current::Own { serial } = current {
                    self.dd.clear_own(serial);
                }
            }
            Some(source) => {
                let serial = source
                    .try_get_handler_ref::<SourceH>()
                    .ok()
                    .map(|h| h.serial);
                let Some(serial) = serial else {
                    return;
                };
                let usable = self
                    .dd
                    .inner
                    .borrow()
                    .sources
                    .get(&serial)
                    .is_some_and(|s| !s.used);
                if usable {
                    self.dd.set_own(serial);
                }
            }
        }
    }

    fn handle_release(&mut self, slf: &Rc<WlDataDevice>) {
        self.dd
            .inner
            .borrow_mut()
            .devices
            .retain(|d| !Rc::ptr_eq(d, slf));
        slf.delete_id();
        slf.unset_handler();
    }
}

struct Offer {
    dd: Rc<DataDev>,
    generation: u64,
}

impl WlDataOfferHandler for Offer {
    fn handle_accept(&mut self, _slf: &Rc<WlDataOffer>, _serial: u32, _mime_type: Option<&str>) {}

    fn handle_receive(&mut self, _slf: &Rc<WlDataOffer>, mime_type: &str, fd: &Rc<OwnedFd>) {
        self.dd.receive(self.generation, mime_type, fd);
    }

    fn handle_destroy(&mut self, slf: &Rc<WlDataOffer>) {
        slf.delete_id();
        slf.unset_handler();
    }

    fn handle_finish(&mut self, _slf: &Rc<WlDataOffer>) {}

    fn handle_set_actions(
        &mut self,
        _slf: &Rc<WlDataOffer>,
        _dnd_actions: wl_proxy::protocols::wayland::wl_data_device_manager::WlDataDeviceManagerDndAction,
        _preferred_action: wl_proxy::protocols::wayland::wl_data_device_manager::WlDataDeviceManagerDndAction,
    ) {
    }
}

impl std::fmt::Debug for DataDev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDev").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mimes(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn test_messages_round_trip_and_bad_ones_are_refused() {
        let all = [
            Msg::SetSelection {
                serial: 7,
                mimes: mimes(&["text/plain", "UTF8_STRING"]),
            },
            Msg::ClearSelection { serial: 7 },
            Msg::Receive {
                generation: 3,
                mime: "text/plain".into(),
            },
            Msg::Selection {
                generation: 3,
                mimes: mimes(&["a"]),
                own: Some(4),
            },
            Msg::Selection {
                generation: 3,
                mimes: vec![],
                own: None,
            },
            Msg::Send {
                serial: 1,
                mime: "a".into(),
            },
            Msg::Cancel { serial: 9 },
            Msg::Chord { copy: true },
            Msg::Chord { copy: false },
            Msg::Notice {
                text: "clipboard: refused, over 64000 chars".into(),
            },
            Msg::Notice {
                text: String::new(),
            },
        ];
        for m in all {
            let b = m.encode();
            assert!(b.len() <= MAX_MSG_BYTES);
            assert_eq!(Msg::decode(&b).unwrap(), m);
            assert!(Msg::decode(&b[..b.len() - 1]).is_err());
            let mut longer = b.clone();
            longer.push(0);
            assert_eq!(Msg::decode(&longer), Err(BadMsg("trailing bytes")));
        }
        assert!(Msg::decode(&[]).is_err());
        assert!(Msg::decode(&[99]).is_err());
        let many = Msg::SetSelection {
            serial: 1,
            mimes: (0..100).map(|i| format!("m{i}")).collect(),
        };
        match Msg::decode(&many.encode()).unwrap() {
            Msg::SetSelection { mimes, .. } => assert_eq!(mimes.len(), MAX_MIMES),
            _ => unreachable!(),
        }
    }

    #[test]
    fn test_wire_bytes_are_pinned() {
        let m = Msg::Selection {
            generation: 3,
            mimes: mimes(&["a"]),
            own: Some(4),
        };
        assert_eq!(
            m.encode(),
            [
                4, 3, 0, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, b'a'
            ]
        );
        assert_eq!(Msg::Chord { copy: false }.encode(), [7, 0]);
    }

    #[test]
    fn test_hub_routes_paste_to_owner_and_cancels_replaced() {
        let mut hub = Hub::default();
        hub.child_added(1);
        hub.child_added(2);
        let out = hub.handle(
            1,
            Msg::SetSelection {
                serial: 5,
                mimes: mimes(&["text/plain"]),
            },
        );
        assert_eq!(
            out,
            vec![
                Out::To(
                    1,
                    Msg::Selection {
                        generation: 1,
                        mimes: mimes(&["text/plain"]),
                        own: Some(5)
                    }
                ),
                Out::To(
                    2,
                    Msg::Selection {
                        generation: 1,
                        mimes: mimes(&["text/plain"]),
                        own: None
                    }
                ),
            ]
        );
        // Paste from child 2 goes to child 1's source 5.
        assert_eq!(
            hub.handle(
                2,
                Msg::Receive {
                    generation: 1,
                    mime: "text/plain".into()
                }
            ),
            vec![Out::To(
                1,
                Msg::Send {
                    serial: 5,
                    mime: "text/plain".into()
                }
            )]
        );
        // A stale generation or a MIME type not on offer goes nowhere.
        assert!(
            hub.handle(
                2,
                Msg::Receive {
                    generation: 0,
                    mime: "text/plain".into()
                }
            )
            .is_empty()
        );
        assert!(
            hub.handle(
                2,
                Msg::Receive {
                    generation: 1,
                    mime: "image/png".into()
                }
            )
            .is_empty()
        );
        // Child 2 takes over: child 1's source is cancelled.
        let out = hub.handle(
            2,
            Msg::SetSelection {
                serial: 1,
                mimes: mimes(&["x"]),
            },
        );
        assert_eq!(out[0], Out::To(1, Msg::Cancel { serial: 5 }));
        assert_eq!(
            hub.current().unwrap().source,
            Source {
                child: 2,
                serial: 1
            }
        );
        // Child 1 clearing its old serial changes nothing; child 2 going away clears.
        assert!(hub.handle(1, Msg::ClearSelection { serial: 5 }).is_empty());
        let out = hub.child_gone(2);
        assert_eq!(
            out,
            vec![Out::To(
                1,
                Msg::Selection {
                    generation: 3,
                    mimes: vec![],
                    own: None
                }
            )]
        );
        assert!(hub.current().is_none());
        // Parent-only messages from a child are ignored.
        assert!(hub.handle(1, Msg::Cancel { serial: 1 }).is_empty());
    }
}

#[cfg(test)]
mod gate_selection_tests {
    use super::*;

    #[test]
    fn test_gate_owned_selection_is_offered_to_all_and_fetch_routes_to_the_owner() {
        let mut hub = Hub::default();
        hub.child_added(1);
        hub.child_added(2);
        hub.handle(
            1,
            Msg::SetSelection {
                serial: 4,
                mimes: vec!["text/plain".into()],
            },
        );
        assert_eq!(
            hub.fetch("text/plain"),
            Some(Out::To(
                1,
                Msg::Send {
                    serial: 4,
                    mime: "text/plain".into()
                }
            ))
        );
        assert_eq!(hub.fetch("image/png"), None);
        let out = hub.set_gate_selection(1, vec!["text/plain;charset=utf-8".into()]);
        assert_eq!(out[0], Out::To(1, Msg::Cancel { serial: 4 }));
        assert_eq!(out.len(), 3, "the cancel and both children told");
        assert!(
            out[1..]
                .iter()
                .all(|Out::To(_, m)| matches!(m, Msg::Selection { own: None, .. }))
        );
        assert_eq!(
            hub.fetch("text/plain;charset=utf-8"),
            Some(Out::To(
                GATE,
                Msg::Send {
                    serial: 1,
                    mime: "text/plain;charset=utf-8".into()
                }
            ))
        );
        // A child's paste of it goes to the gate.
        let generation = match &out[1] {
            Out::To(_, Msg::Selection { generation, .. }) => *generation,
            _ => unreachable!(),
        };
        assert_eq!(
            hub.handle(
                2,
                Msg::Receive {
                    generation,
                    mime: "text/plain;charset=utf-8".into()
                }
            ),
            vec![Out::To(
                GATE,
                Msg::Send {
                    serial: 1,
                    mime: "text/plain;charset=utf-8".into()
                }
            )]
        );
        // A child taking the selection cancels the gate's.
        let out = hub.handle(
            2,
            Msg::SetSelection {
                serial: 1,
                mimes: vec!["x".into()],
            },
        );
        assert_eq!(out[0], Out::To(GATE, Msg::Cancel { serial: 1 }));
        assert!(hub.handle(1, Msg::Chord { copy: true }).is_empty());
    }
}
