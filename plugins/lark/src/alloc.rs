//! The guest's global allocator (wasm builds only): power-of-two size classes with free lists,
//! on top of the system allocator (wasi-libc's dlmalloc).
//!
//! A call allocates and frees a few dozen small blocks (the decoded message's strings, parser
//! scratch, the arguments and results the host copies in and out). Serving them from a free
//! list is a few instructions, where dlmalloc's general bins cost several times more. Blocks of
//! up to [`MAX_SMALL`] bytes are rounded up to their class and, once freed, only ever reused
//! for that class; larger or over-aligned blocks go to the system allocator. The memory kept in
//! the free lists is bounded by the peak of live small blocks, and an instance is recycled by
//! the host after a number of calls anyway.
//!
//! The wasm32-wasip2 guest is single-threaded (the target has no threads), which is what makes
//! the unsynchronized free lists sound; the module is not compiled where atomics exist.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Smallest class: 16 bytes (the free-list link needs a pointer; 16 keeps `u128` alignment).
const MIN_SHIFT: u32 = 4;
/// Number of classes: 16, 32, …, 4096 bytes.
const CLASSES: usize = 9;
/// Largest size served from a class.
const MAX_SMALL: usize = 1 << (MIN_SHIFT as usize + CLASSES - 1);
/// Alignment of every class block (requests for more go to the system allocator).
const CLASS_ALIGN: usize = 1 << MIN_SHIFT;

/// The allocator: one free list of blocks per class, linked through their first word.
pub(crate) struct SizeClasses {
    heads: UnsafeCell<[*mut u8; CLASSES]>,
}

// SAFETY: the guest has a single thread (see the module docs), so the free lists are never
// accessed concurrently.
unsafe impl Sync for SizeClasses {}

impl SizeClasses {
    /// An allocator with empty free lists.
    pub(crate) const fn new() -> Self {
        Self {
            heads: UnsafeCell::new([ptr::null_mut(); CLASSES]),
        }
    }
}

/// The class of a layout, `None` for blocks the system allocator serves.
fn class_of(layout: Layout) -> Option<usize> {
    if layout.size() > MAX_SMALL || layout.align() > CLASS_ALIGN {
        return None;
    }
    let size = layout.size().max(1).next_power_of_two();
    Some((size.trailing_zeros().saturating_sub(MIN_SHIFT)) as usize)
}

/// The layout the system allocator gives a block of `class`.
fn class_layout(class: usize) -> Layout {
    // Valid: a power of two size of at least the alignment, far below `isize::MAX`.
    Layout::from_size_align(1 << (MIN_SHIFT as usize + class), CLASS_ALIGN)
        .expect("class layouts are valid")
}

unsafe impl GlobalAlloc for SizeClasses {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            // SAFETY: forwarded with the caller's (non-zero-sized) layout.
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: single-threaded (see `Sync`); the head is null or a block of this class whose
        // first word holds the next free block.
        unsafe {
            let head = &mut (*self.heads.get())[class];
            if head.is_null() {
                return System.alloc(class_layout(class));
            }
            let block = *head;
            *head = block.cast::<*mut u8>().read();
            block
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            // SAFETY: the block came from `System.alloc` with this layout.
            return unsafe { System.dealloc(block, layout) };
        };
        // SAFETY: single-threaded; the block is at least 16 bytes, 16-aligned and no longer
        // used by the caller, so its first word can hold the link.
        unsafe {
            let head = &mut (*self.heads.get())[class];
            block.cast::<*mut u8>().write(*head);
            *head = block;
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align(new_size, layout.align());
        match (class_of(layout), new_layout.ok().and_then(class_of)) {
            // The block already has room for the new size.
            (Some(old), Some(new)) if old == new => block,
            // SAFETY: forwarded unchanged to the system allocator, which owns the block.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            _ => {
                // SAFETY: the caller guarantees `new_size` forms a valid layout with `layout`'s
                // alignment; the old block is valid for `min(old, new)` bytes and is freed after
                // the copy.
                unsafe {
                    let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                    let new_block = self.alloc(new_layout);
                    if !new_block.is_null() {
                        ptr::copy_nonoverlapping(block, new_block, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    new_block
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let layout = |size, align| Layout::from_size_align(size, align).unwrap();
        assert_eq!(class_of(layout(1, 1)), Some(0));
        assert_eq!(class_of(layout(16, 8)), Some(0));
        assert_eq!(class_of(layout(17, 1)), Some(1));
        assert_eq!(class_of(layout(MAX_SMALL, 1)), Some(CLASSES - 1));
        assert_eq!(class_of(layout(MAX_SMALL + 1, 1)), None);
        assert_eq!(class_of(layout(8, 32)), None);
    }

    #[test]
    fn blocks_are_reused_within_their_class() {
        let classes = SizeClasses::new();
        let small = Layout::from_size_align(24, 8).unwrap();
        let big = Layout::from_size_align(MAX_SMALL * 2, 8).unwrap();
        unsafe {
            let a = classes.alloc(small);
            a.write_bytes(0xab, 24);
            classes.dealloc(a, small);
            let b = classes.alloc(Layout::from_size_align(32, 16).unwrap());
            assert_eq!(a, b, "a freed block serves the next request of its class");
            let grown = classes.realloc(b, Layout::from_size_align(32, 16).unwrap(), 20);
            assert_eq!(grown, b, "a realloc within the class keeps the block");
            let moved = classes.realloc(grown, Layout::from_size_align(20, 16).unwrap(), 100);
            assert_ne!(moved, grown);
            classes.dealloc(moved, Layout::from_size_align(100, 16).unwrap());
            let large = classes.alloc(big);
            assert!(!large.is_null());
            classes.dealloc(large, big);
        }
    }
}
