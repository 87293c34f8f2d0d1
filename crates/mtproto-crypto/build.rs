//! Writes the straight-line column code of the 2048-bit Montgomery multiplication and squaring
//! (`src/montgomery.rs` includes it).
//!
//! Product scanning sums one column of the product at a time, and the columns have 1 to 32
//! products each. Written as loops, every column ends in a loop exit the branch predictor
//! misses, about a third of the time of a squaring; LLVM unrolls only some of them. Here every
//! product is one line with constant indices, so the code has no branch and no bounds check, and
//! the instructions it runs depend on nothing but the column (constant time by construction).

use std::fmt::Write as _;
use std::path::PathBuf;

/// Limbs in a 2048-bit number.
const LIMBS: usize = 32;

fn main() -> std::io::Result<()> {
    let mut out = String::new();
    square(&mut out);
    mul(&mut out);
    let dir = std::env::var_os("OUT_DIR").ok_or_else(|| std::io::Error::other("OUT_DIR is not set"))?;
    std::fs::write(PathBuf::from(dir).join("montgomery_columns.rs"), out)?;
    println!("cargo::rerun-if-changed=build.rs");
    Ok(())
}

/// The reduction part of column `k`: `m[j]·p[k-j]` for the `m` known so far, then either the next
/// `m` (columns below `LIMBS`) or one limb of the result.
fn reduce_column(out: &mut String, k: usize, lo: usize) {
    for j in lo..k.min(LIMBS) {
        let _ = writeln!(out, "    c.add_product(m[{j}], p[{}]);", k - j);
    }
    if k < LIMBS {
        let _ = writeln!(out, "    m[{k}] = c.low().wrapping_mul(p_inv);");
        let _ = writeln!(out, "    c.add_product(m[{k}], p[0]);");
    } else {
        let _ = writeln!(out, "    r[{}] = c.low();", k - LIMBS);
    }
    let _ = writeln!(out, "    c.shift();");
}

/// The generated functions: each Montgomery operation is two, the low half of the columns (which
/// finds the reduction's multipliers `m`) and the high half (which writes the result); one
/// function of all 64 columns was 7% slower (LLVM keeps more values live across it and spills
/// them). Per half: its name, its columns, and the parameters it needs besides the operands.
const HALVES: [(&str, std::ops::Range<usize>, &str); 2] = [
    ("low", 0..LIMBS, "p_inv: u64, m: &mut Limbs"),
    ("high", LIMBS..2 * LIMBS, "m: &Limbs, r: &mut Limbs"),
];

fn square(out: &mut String) {
    for (half, columns, params) in HALVES {
        let _ = writeln!(
            out,
            "/// Columns {columns:?} of [`square_columns`].\n#[inline(never)]\n\
             fn square_{half}(a: &Limbs, p: &Limbs, {params}, mut carry: Column) -> Column {{"
        );
        for k in columns {
            let lo = k.saturating_sub(LIMBS - 1);
            let _ = writeln!(out, "    // column {k}\n    let mut c = Column::default();");
            // Cross products a[i]·a[k-i] with i < k - i, doubled, then the square a[k/2]².
            for i in lo..k.div_ceil(2) {
                let _ = writeln!(out, "    c.add_product(a[{i}], a[{}]);", k - i);
            }
            let _ = writeln!(out, "    c.double();");
            if k % 2 == 0 && k / 2 < LIMBS {
                let _ = writeln!(out, "    c.add_product(a[{0}], a[{0}]);", k / 2);
            }
            let _ = writeln!(out, "    c.add(&carry);");
            reduce_column(out, k, lo);
            let _ = writeln!(out, "    carry = c;");
        }
        out.push_str("    carry\n}\n\n");
    }
    out.push_str(
        "/// Montgomery square by columns: `r + 2^2048·(returned limb) = a·a·R^-1 (mod p)`, below 2p.\n\
         /// `m` ends holding the reduction's multipliers (the caller wipes it).\n\
         fn square_columns(a: &Limbs, p: &Limbs, p_inv: u64, m: &mut Limbs, r: &mut Limbs) -> u64 {\n\
         \x20   let c = square_low(a, p, p_inv, m, Column::default());\n\
         \x20   square_high(a, p, m, r, c).low()\n\
         }\n\n",
    );
}

fn mul(out: &mut String) {
    for (half, columns, params) in HALVES {
        let _ = writeln!(
            out,
            "/// Columns {columns:?} of [`mul_columns`].\n#[inline(never)]\n\
             fn mul_{half}(a: &Limbs, b: &Limbs, p: &Limbs, {params}, mut c: Column) -> Column {{"
        );
        for k in columns {
            let lo = k.saturating_sub(LIMBS - 1);
            let _ = writeln!(out, "    // column {k}");
            for j in lo..=k.min(LIMBS - 1) {
                let _ = writeln!(out, "    c.add_product(a[{j}], b[{}]);", k - j);
            }
            reduce_column(out, k, lo);
        }
        out.push_str("    c\n}\n\n");
    }
    out.push_str(
        "/// Montgomery product by columns: `r + 2^2048·(returned limb) = a·b·R^-1 (mod p)`, below 2p.\n\
         /// `m` ends holding the reduction's multipliers (the caller wipes it).\n\
         fn mul_columns(a: &Limbs, b: &Limbs, p: &Limbs, p_inv: u64, m: &mut Limbs, r: &mut Limbs) -> u64 {\n\
         \x20   let c = mul_low(a, b, p, p_inv, m, Column::default());\n\
         \x20   mul_high(a, b, p, m, r, c).low()\n\
         }\n",
    );
}
