//! Run-time loading of the Xen tool libraries: nothing of Xen is needed to
//! build, and a missing library or symbol is an error at start, not a crash.

use crate::error::{Result, XenError};
use libloading::Library;

/// Opens a library by file name (searched by the dynamic loader) or path.
pub(crate) fn open(name: &str) -> Result<Library> {
    // SAFETY: loading a Xen tool library runs its ELF constructors; the Xen
    // libraries we load have none with preconditions (they only register
    // atfork/xentoolcore hooks), and we load them by their stable soname.
    unsafe { Library::new(name) }.map_err(|source| XenError::Load {
        library: name.to_owned(),
        source,
    })
}

/// Opens the first library of `names` that loads (versioned sonames, newest
/// first).
pub(crate) fn open_first(names: &[&str]) -> Result<(Library, String)> {
    let mut last = String::from("no candidate");
    for name in names {
        match open(name) {
            Ok(lib) => return Ok((lib, (*name).to_owned())),
            Err(e) => last = e.to_string(),
        }
    }
    Err(XenError::NoVersion {
        tried: names.join(", "),
        last,
    })
}

/// Resolves `symbol` in `lib` as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the exact `unsafe extern "C" fn` type of the C symbol, and the
/// returned pointer must not be called after `lib` is dropped.
pub(crate) unsafe fn sym<T: Copy>(lib: &Library, library: &str, symbol: &'static str) -> Result<T> {
    let mut name = Vec::with_capacity(symbol.len() + 1);
    name.extend_from_slice(symbol.as_bytes());
    name.push(0);
    // SAFETY: the caller guarantees `T` matches the symbol's C type.
    let s = unsafe { lib.get::<T>(&name) }.map_err(|source| XenError::Symbol {
        library: library.to_owned(),
        symbol,
        source,
    })?;
    Ok(*s)
}

/// Declares a struct holding a loaded library and every symbol we use from
/// it, resolved once at load time.
macro_rules! library {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $field:ident : fn($($arg:ty),*) $(-> $ret:ty)? ; )*
            $( ? $ofield:ident : fn($($oarg:ty),*) $(-> $oret:ty)? ; )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( pub(crate) $field: unsafe extern "C" fn($($arg),*) $(-> $ret)?, )*
            $( pub(crate) $ofield: Option<unsafe extern "C" fn($($oarg),*) $(-> $oret)?>, )*
            soname: String,
            // Declared last: dropped after every function pointer above is
            // gone (they are plain pointers and cannot outlive `self`).
            _lib: libloading::Library,
        }

        impl $name {
            fn from_library(lib: libloading::Library, soname: String) -> $crate::error::Result<Self> {
                // SAFETY: each type below is transcribed from the C
                // prototype in the Xen 4.20 public headers, and the pointers
                // live in the same struct as the library, which is dropped
                // after them.
                unsafe {
                    Ok(Self {
                        $( $field: $crate::loader::sym(&lib, &soname, stringify!($field))?, )*
                        $( $ofield: $crate::loader::sym(&lib, &soname, stringify!($ofield)).ok(), )*
                        soname,
                        _lib: lib,
                    })
                }
            }

            /// The soname (or path) this library was loaded from.
            pub fn soname(&self) -> &str {
                &self.soname
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).field("soname", &self.soname).finish()
            }
        }
    };
}
pub(crate) use library;
