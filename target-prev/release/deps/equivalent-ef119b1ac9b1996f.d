/work/wt/tests/target-prev/release/deps/equivalent-ef119b1ac9b1996f.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/equivalent-1.0.3/src/lib.rs

/work/wt/tests/target-prev/release/deps/libequivalent-ef119b1ac9b1996f.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/equivalent-1.0.3/src/lib.rs

/work/wt/tests/target-prev/release/deps/libequivalent-ef119b1ac9b1996f.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/equivalent-1.0.3/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/equivalent-1.0.3/src/lib.rs:
