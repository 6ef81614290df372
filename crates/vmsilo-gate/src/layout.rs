//! The frame's geometry: where the guest content sits inside the gate's frame, and how sizes
//! and positions translate between the compositor (which sees the frame) and the guest (which
//! sees its content). Sans-IO; every value from the guest is hostile, so nothing here panics
//! or overflows: sizes are clamped, and content larger than [`MAX_CONTENT`] has no layout.

/// Width of the ring on the left, right and bottom, in surface-local pixels.
pub const BORDER: i32 = 4;
/// Height of the label band on top (the ring's top edge), in surface-local pixels.
pub const BAND: i32 = 24;
/// Largest content width or height the gate frames (logical pixels). A guest whose content is
/// larger is cut off: the gate cannot draw a frame around it.
pub const MAX_CONTENT: i32 = 16_384;
/// Extra frame width (left and right ring).
pub const EXTRA_W: i32 = 2 * BORDER;
/// Extra frame height (band and bottom ring).
pub const EXTRA_H: i32 = BAND + BORDER;

/// A rectangle in some surface's coordinates; `x1`/`y1` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extents {
    /// Left.
    pub x0: i32,
    /// Top.
    pub y0: i32,
    /// Right (exclusive).
    pub x1: i32,
    /// Bottom (exclusive).
    pub y1: i32,
}

impl Extents {
    /// The rectangle at (`x`, `y`) of size `w`×`h` (negative sizes count as 0); saturating.
    pub fn at(x: i32, y: i32, w: i32, h: i32) -> Self {
        Self {
            x0: x,
            y0: y,
            x1: x.saturating_add(w.max(0)),
            y1: y.saturating_add(h.max(0)),
        }
    }

    /// Whether the rectangle has no area.
    pub fn is_empty(&self) -> bool {
        self.x1 <= self.x0 || self.y1 <= self.y0
    }

    /// The smallest rectangle containing both (an empty side is ignored).
    pub fn union(self, other: Extents) -> Extents {
        if other.is_empty() {
            return self;
        }
        if self.is_empty() {
            return other;
        }
        Extents {
            x0: self.x0.min(other.x0),
            y0: self.y0.min(other.y0),
            x1: self.x1.max(other.x1),
            y1: self.y1.max(other.y1),
        }
    }

    /// Moved by (`dx`, `dy`), saturating.
    pub fn translate(self, dx: i32, dy: i32) -> Extents {
        Extents {
            x0: self.x0.saturating_add(dx),
            y0: self.y0.saturating_add(dy),
            x1: self.x1.saturating_add(dx),
            y1: self.y1.saturating_add(dy),
        }
    }

    /// Width (0 when empty), as i64 so that no difference overflows.
    pub fn width(&self) -> i64 {
        (i64::from(self.x1) - i64::from(self.x0)).max(0)
    }

    /// Height (0 when empty).
    pub fn height(&self) -> i64 {
        (i64::from(self.y1) - i64::from(self.y0)).max(0)
    }
}

/// Where everything sits in the gate's frame surface F.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Frame width (content + 2 × border).
    pub width: i32,
    /// Frame height (band + content + border).
    pub height: i32,
    /// Width of everything the guest draws (the union of its surface tree).
    pub content_w: i32,
    /// Height of everything the guest draws.
    pub content_h: i32,
    /// Position of the guest's toplevel surface S in F (so that the union's top-left corner is
    /// at (BORDER, BAND)).
    pub surface_x: i32,
    /// See `surface_x`.
    pub surface_y: i32,
}

impl Layout {
    /// The frame around no content: ring and band only.
    pub const EMPTY: Layout = Layout {
        width: EXTRA_W,
        height: EXTRA_H,
        content_w: 0,
        content_h: 0,
        surface_x: BORDER,
        surface_y: BAND,
    };

    /// The layout for a guest surface tree whose extents (relative to S's origin) are `ext`.
    /// An empty tree gets a content of 0×0 (the frame is then just ring and band). `None`
    /// when the content is larger than [`MAX_CONTENT`] in either direction.
    pub fn for_extents(ext: Extents) -> Option<Layout> {
        let ext = if ext.is_empty() {
            Extents::at(0, 0, 0, 0)
        } else {
            ext
        };
        let (w, h) = (ext.width(), ext.height());
        if w > i64::from(MAX_CONTENT) || h > i64::from(MAX_CONTENT) {
            return None;
        }
        let (w, h) = (w as i32, h as i32);
        // -x0 fits: |x0| is bounded by the extents we accept only if x1 is, so use i64.
        let sx = i64::from(BORDER) - i64::from(ext.x0);
        let sy = i64::from(BAND) - i64::from(ext.y0);
        let sx = i32::try_from(sx).ok()?;
        let sy = i32::try_from(sy).ok()?;
        Some(Layout {
            width: w + EXTRA_W,
            height: h + EXTRA_H,
            content_w: w,
            content_h: h,
            surface_x: sx,
            surface_y: sy,
        })
    }

    /// The inner (content) rectangle in frame coordinates.
    pub fn inner(&self) -> Extents {
        Extents::at(BORDER, BAND, self.content_w, self.content_h)
    }
}

/// The logical size of a surface's content: the buffer size divided by the buffer scale,
/// swapped for 90°/270° transforms, or the viewport's destination size when set. Hostile
/// values never panic: a scale < 1 counts as 1, negative sizes as 0.
pub fn surface_size(
    buffer: Option<(i32, i32)>,
    scale: i32,
    transform: u32,
    viewport_dst: Option<(i32, i32)>,
) -> (i32, i32) {
    let Some((bw, bh)) = buffer else {
        return (0, 0);
    };
    if let Some((w, h)) = viewport_dst
        && w > 0
        && h > 0
    {
        return (w, h);
    }
    let scale = scale.max(1);
    let (w, h) = (bw.max(0) / scale, bh.max(0) / scale);
    // wl_output.transform: odd values (90, 270, flipped_90, flipped_270) swap the axes.
    if transform % 2 == 1 { (h, w) } else { (w, h) }
}

/// The size the guest is told in its configure, for a frame configure of `w`×`h`.
/// `margin` is how much larger the guest's content is than its window geometry (client-side
/// shadows). 0 stays 0 ("you choose"); otherwise at least 1.
pub fn inner_size(w: i32, h: i32, margin: (i32, i32)) -> (i32, i32) {
    fn one(v: i32, extra: i32, margin: i32) -> i32 {
        if v <= 0 {
            return 0;
        }
        let inner = i64::from(v) - i64::from(extra) - i64::from(margin.max(0));
        inner.clamp(1, i64::from(i32::MAX)) as i32
    }
    (one(w, EXTRA_W, margin.0), one(h, EXTRA_H, margin.1))
}

/// The frame's min or max size for a guest min/max size (0 = no limit stays 0; negative is
/// treated as 0 = no limit, the compositor would reject it).
pub fn outer_limit(w: i32, h: i32, margin: (i32, i32)) -> (i32, i32) {
    fn one(v: i32, extra: i32, margin: i32) -> i32 {
        if v <= 0 {
            return 0;
        }
        (i64::from(v) + i64::from(extra) + i64::from(margin.max(0))).min(i64::from(i32::MAX)) as i32
    }
    (one(w, EXTRA_W, margin.0), one(h, EXTRA_H, margin.1))
}

/// How much larger the content is than the guest's window geometry (its shadows), per axis,
/// never negative.
pub fn geometry_margin(layout: &Layout, geometry: Option<(i32, i32, i32, i32)>) -> (i32, i32) {
    match geometry {
        Some((_, _, gw, gh)) if gw > 0 && gh > 0 => (
            (layout.content_w.saturating_sub(gw)).max(0),
            (layout.content_h.saturating_sub(gh)).max(0),
        ),
        _ => (0, 0),
    }
}

/// Offset from the guest's window-geometry coordinates (what xdg_positioner anchor rects and
/// xdg_popup configure positions of a toplevel's popups are relative to) to the frame's
/// window geometry (the whole frame).
pub fn popup_offset(layout: &Layout, geometry: Option<(i32, i32, i32, i32)>) -> (i32, i32) {
    let (gx, gy) = match geometry {
        Some((x, y, w, h)) if w > 0 && h > 0 => (x, y),
        _ => (0, 0),
    };
    (
        layout.surface_x.saturating_add(gx),
        layout.surface_y.saturating_add(gy),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_layout_of_a_plain_surface() {
        let l = Layout::for_extents(Extents::at(0, 0, 250, 250)).unwrap();
        assert_eq!((l.width, l.height), (258, 278));
        assert_eq!((l.surface_x, l.surface_y), (BORDER, BAND));
        assert_eq!(l.inner(), Extents::at(4, 24, 250, 250));
    }

    #[test]
    fn test_layout_encloses_subsurfaces_outside_the_surface() {
        // A child at (-100, -100) of 50x50 on a 200x100 surface.
        let ext = Extents::at(0, 0, 200, 100).union(Extents::at(-100, -100, 50, 50));
        let l = Layout::for_extents(ext).unwrap();
        assert_eq!((l.content_w, l.content_h), (300, 200));
        assert_eq!((l.surface_x, l.surface_y), (BORDER + 100, BAND + 100));
    }

    #[test]
    fn test_layout_of_nothing_and_of_too_much() {
        let l = Layout::for_extents(Extents::at(5, 5, 0, 0)).unwrap();
        assert_eq!((l.width, l.height, l.content_w), (EXTRA_W, EXTRA_H, 0));
        assert_eq!(l, Layout::EMPTY);
        assert!(Layout::for_extents(Extents::at(0, 0, MAX_CONTENT + 1, 1)).is_none());
        assert!(Layout::for_extents(Extents::at(0, 0, 1, i32::MAX)).is_none());
        assert!(
            Layout::for_extents(Extents::at(0, 0, 10, 10).union(Extents::at(
                i32::MIN,
                i32::MIN,
                1,
                1
            )))
            .is_none()
        );
        assert!(Layout::for_extents(Extents::at(i32::MAX, i32::MAX, i32::MAX, i32::MAX)).is_some());
        let l = Layout::for_extents(Extents::at(0, 0, MAX_CONTENT, MAX_CONTENT)).unwrap();
        assert_eq!(l.width, MAX_CONTENT + EXTRA_W);
    }

    #[test]
    fn test_surface_size_scale_transform_viewport() {
        assert_eq!(surface_size(None, 1, 0, None), (0, 0));
        assert_eq!(surface_size(Some((200, 100)), 1, 0, None), (200, 100));
        assert_eq!(surface_size(Some((200, 100)), 2, 0, None), (100, 50));
        assert_eq!(surface_size(Some((200, 100)), 1, 1, None), (100, 200));
        assert_eq!(surface_size(Some((200, 100)), 2, 7, None), (50, 100));
        assert_eq!(
            surface_size(Some((200, 100)), 1, 0, Some((640, 480))),
            (640, 480)
        );
        // hostile: scale 0 or negative, negative sizes, unset (-1) viewport
        assert_eq!(surface_size(Some((200, 100)), 0, 0, None), (200, 100));
        assert_eq!(
            surface_size(Some((200, 100)), i32::MIN, 0, None),
            (200, 100)
        );
        assert_eq!(surface_size(Some((-5, i32::MIN)), 1, 0, None), (0, 0));
        assert_eq!(surface_size(Some((20, 10)), 1, 0, Some((-1, -1))), (20, 10));
        assert_eq!(
            surface_size(Some((i32::MAX, 1)), 1, u32::MAX, None),
            (1, i32::MAX)
        );
    }

    #[test]
    fn test_configure_in_and_out() {
        assert_eq!(inner_size(0, 0, (0, 0)), (0, 0));
        assert_eq!(inner_size(800, 600, (0, 0)), (800 - 8, 600 - 28));
        assert_eq!(
            inner_size(800, 600, (20, 30)),
            (800 - 8 - 20, 600 - 28 - 30)
        );
        // smaller than the frame itself: 1, never 0 (0 would mean "you choose") or negative
        assert_eq!(inner_size(3, 10, (0, 0)), (1, 1));
        assert_eq!(inner_size(-5, i32::MIN, (0, 0)), (0, 0));
        assert_eq!(
            inner_size(i32::MAX, i32::MAX, (i32::MIN, i32::MAX)),
            (i32::MAX - 8, 1)
        );
    }

    #[test]
    fn test_min_max_size() {
        assert_eq!(outer_limit(0, 0, (0, 0)), (0, 0));
        assert_eq!(outer_limit(100, 0, (0, 0)), (108, 0));
        assert_eq!(outer_limit(100, 50, (10, 10)), (118, 88));
        assert_eq!(outer_limit(-1, i32::MIN, (0, 0)), (0, 0));
        assert_eq!(
            outer_limit(i32::MAX, i32::MAX - 1, (5, 5)),
            (i32::MAX, i32::MAX)
        );
    }

    #[test]
    fn test_window_geometry_margin() {
        let l = Layout::for_extents(Extents::at(0, 0, 300, 200)).unwrap();
        assert_eq!(geometry_margin(&l, None), (0, 0));
        assert_eq!(geometry_margin(&l, Some((10, 10, 280, 180))), (20, 20));
        // geometry larger than the content, zero or negative sizes: no margin
        assert_eq!(geometry_margin(&l, Some((0, 0, 1000, 1000))), (0, 0));
        assert_eq!(geometry_margin(&l, Some((0, 0, 0, 5))), (0, 0));
        assert_eq!(geometry_margin(&l, Some((0, 0, i32::MIN, -1))), (0, 0));
    }

    #[test]
    fn test_positioner_translation() {
        let l = Layout::for_extents(Extents::at(0, 0, 300, 200)).unwrap();
        assert_eq!(popup_offset(&l, None), (BORDER, BAND));
        assert_eq!(
            popup_offset(&l, Some((10, 12, 280, 180))),
            (BORDER + 10, BAND + 12)
        );
        let l = Layout::for_extents(Extents::at(-50, -20, 350, 220)).unwrap();
        assert_eq!(popup_offset(&l, None), (BORDER + 50, BAND + 20));
        // hostile geometry offsets saturate
        assert_eq!(
            popup_offset(&l, Some((i32::MAX, i32::MIN, 1, 1))),
            (i32::MAX, i32::MIN + BAND + 20)
        );
    }

    #[test]
    fn test_extents_union_and_translate_saturate() {
        let a = Extents::at(0, 0, 10, 10);
        assert_eq!(a.union(Extents::at(0, 0, 0, 0)), a);
        assert_eq!(Extents::at(3, 3, 0, 0).union(a), a);
        assert_eq!(a.translate(i32::MAX, i32::MIN).x1, i32::MAX);
        assert_eq!(Extents::at(i32::MAX, 0, i32::MAX, 1).x1, i32::MAX);
        assert!(Extents::at(i32::MAX, 0, i32::MAX, 1).is_empty());
    }
}
