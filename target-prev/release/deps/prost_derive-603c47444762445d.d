/work/wt/tests/target-prev/release/deps/prost_derive-603c47444762445d.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/mod.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/group.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/map.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/message.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/oneof.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/scalar.rs

/work/wt/tests/target-prev/release/deps/libprost_derive-603c47444762445d.so: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/mod.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/group.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/map.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/message.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/oneof.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/scalar.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/mod.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/group.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/map.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/message.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/oneof.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/prost-derive-0.14.6/src/field/scalar.rs:
