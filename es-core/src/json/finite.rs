//! A serializer wrapper that refuses non-finite floats. serde_json writes NaN and the
//! infinities as `null`, which the payload type then cannot read back as a number, so a stream
//! holding such an event would never load again. The wrapper forwards everything else to the
//! wrapped serializer untouched, in the same single pass.
//!
//! The JSON pointer of the offending value is built only on the error path: each level that
//! sees its child fail adds its own segment (a struct field's name, a sequence index, `*` for a
//! map value, whose key may be personal data).

use std::cell::RefCell;

use serde::ser::{self, Error as _, Serialize, Serializer};

/// What the wrapper found, filled in on the way back up.
#[derive(Debug, Default)]
pub(super) struct Found {
    /// `NaN`, `inf` or `-inf`.
    pub(super) value: Option<f64>,
    /// Pointer segments, innermost first.
    pub(super) segments: Vec<String>,
}

type Slot = RefCell<Found>;

/// `value`, serialized through [`Checked`].
pub(super) struct Finite<'a, T: ?Sized> {
    pub(super) value: &'a T,
    pub(super) found: &'a Slot,
}

impl<T: Serialize + ?Sized> Serialize for Finite<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(Checked {
            inner: serializer,
            found: self.found,
        })
    }
}

fn wrap<'a, T: ?Sized>(value: &'a T, found: &'a Slot) -> Finite<'a, T> {
    Finite { value, found }
}

/// Passes `error` on, adding `segment` to the pointer when the failure below was a
/// non-finite float.
fn locate<E>(error: E, found: &Slot, segment: impl FnOnce() -> String) -> E {
    let mut found = found.borrow_mut();
    if found.value.is_some() {
        found.segments.push(segment());
    }
    error
}

struct Checked<'a, S> {
    inner: S,
    found: &'a Slot,
}

impl<S: Serializer> Checked<'_, S> {
    fn refuse(self, value: f64) -> Result<S::Ok, S::Error> {
        self.found.borrow_mut().value = Some(value);
        Err(S::Error::custom("JSON has no NaN or infinity"))
    }
}

/// A compound serializer of the wrapped one; `index` counts sequence elements for the pointer,
/// `variant` is the enum variant a tuple or struct variant is written under.
struct Compound<'a, C> {
    inner: C,
    found: &'a Slot,
    index: usize,
    variant: Option<&'static str>,
}

impl<'a, C> Compound<'a, C> {
    fn new(inner: C, found: &'a Slot) -> Self {
        Compound {
            inner,
            found,
            index: 0,
            variant: None,
        }
    }

    fn in_variant(mut self, variant: &'static str) -> Self {
        self.variant = Some(variant);
        self
    }

    /// `locate` for a child at `segment`, then for the variant around it.
    fn locate<E>(&self, error: E, segment: impl FnOnce() -> String) -> E {
        let error = locate(error, self.found, segment);
        match self.variant {
            Some(variant) => locate(error, self.found, || variant.to_owned()),
            None => error,
        }
    }
}

macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $method(self, $($arg: $ty),*) -> Result<S::Ok, S::Error> {
                self.inner.$method($($arg),*)
            }
        )*
    };
}

impl<'a, S: Serializer> Serializer for Checked<'a, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Compound<'a, S::SerializeSeq>;
    type SerializeTuple = Compound<'a, S::SerializeTuple>;
    type SerializeTupleStruct = Compound<'a, S::SerializeTupleStruct>;
    type SerializeTupleVariant = Compound<'a, S::SerializeTupleVariant>;
    type SerializeMap = Compound<'a, S::SerializeMap>;
    type SerializeStruct = Compound<'a, S::SerializeStruct>;
    type SerializeStructVariant = Compound<'a, S::SerializeStructVariant>;

    forward! {
        serialize_bool(v: bool);
        serialize_i8(v: i8);
        serialize_i16(v: i16);
        serialize_i32(v: i32);
        serialize_i64(v: i64);
        serialize_i128(v: i128);
        serialize_u8(v: u8);
        serialize_u16(v: u16);
        serialize_u32(v: u32);
        serialize_u64(v: u64);
        serialize_u128(v: u128);
        serialize_char(v: char);
        serialize_str(v: &str);
        serialize_bytes(v: &[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(name: &'static str);
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
    }

    fn serialize_f32(self, v: f32) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            self.inner.serialize_f32(v)
        } else {
            self.refuse(f64::from(v))
        }
    }

    fn serialize_f64(self, v: f64) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            self.inner.serialize_f64(v)
        } else {
            self.refuse(v)
        }
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.inner.serialize_some(&wrap(value, self.found))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.inner
            .serialize_newtype_struct(name, &wrap(value, self.found))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        let found = self.found;
        self.inner
            .serialize_newtype_variant(name, index, variant, &wrap(value, found))
            .map_err(|error| locate(error, found, || variant.to_owned()))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        Ok(Compound::new(self.inner.serialize_seq(len)?, self.found))
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        Ok(Compound::new(self.inner.serialize_tuple(len)?, self.found))
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        Ok(Compound::new(
            self.inner.serialize_tuple_struct(name, len)?,
            self.found,
        ))
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        Ok(Compound::new(
            self.inner
                .serialize_tuple_variant(name, index, variant, len)?,
            self.found,
        )
        .in_variant(variant))
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        Ok(Compound::new(self.inner.serialize_map(len)?, self.found))
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        Ok(Compound::new(
            self.inner.serialize_struct(name, len)?,
            self.found,
        ))
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        Ok(Compound::new(
            self.inner
                .serialize_struct_variant(name, index, variant, len)?,
            self.found,
        )
        .in_variant(variant))
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! elements {
    ($($trait:ident :: $method:ident;)*) => {
        $(
            impl<C: ser::$trait> ser::$trait for Compound<'_, C> {
                type Ok = C::Ok;
                type Error = C::Error;

                fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
                    let index = self.index;
                    self.inner
                        .$method(&wrap(value, self.found))
                        .map_err(|error| self.locate(error, || index.to_string()))?;
                    self.index += 1;
                    Ok(())
                }

                fn end(self) -> Result<C::Ok, C::Error> {
                    self.inner.end()
                }
            }
        )*
    };
}

elements! {
    SerializeSeq::serialize_element;
    SerializeTuple::serialize_element;
    SerializeTupleStruct::serialize_field;
    SerializeTupleVariant::serialize_field;
}

macro_rules! fields {
    ($($trait:ident;)*) => {
        $(
            impl<C: ser::$trait> ser::$trait for Compound<'_, C> {
                type Ok = C::Ok;
                type Error = C::Error;

                fn serialize_field<T: Serialize + ?Sized>(
                    &mut self,
                    key: &'static str,
                    value: &T,
                ) -> Result<(), C::Error> {
                    self.inner
                        .serialize_field(key, &wrap(value, self.found))
                        .map_err(|error| self.locate(error, || key.to_owned()))
                }

                fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
                    self.inner.skip_field(key)
                }

                fn end(self) -> Result<C::Ok, C::Error> {
                    self.inner.end()
                }
            }
        )*
    };
}

fields! {
    SerializeStruct;
    SerializeStructVariant;
}

impl<C: ser::SerializeMap> ser::SerializeMap for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), C::Error> {
        let found = self.found;
        self.inner
            .serialize_key(&wrap(key, found))
            .map_err(|error| locate(error, found, || "*".to_owned()))
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        let found = self.found;
        self.inner
            .serialize_value(&wrap(value, found))
            .map_err(|error| locate(error, found, || "*".to_owned()))
    }

    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}
