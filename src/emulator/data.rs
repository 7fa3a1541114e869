//! The demo world: credentials, accounts, balances that drift a little over time (so history
//! charts move), and payouts in every documented status.

use rust_decimal::Decimal;

/// Credentials the emulators accept (and `tally demo` uses). Not secrets: published fakes.
pub mod credentials {
    pub const LEANX_MAIN_TOKEN: &str = "LP-DEMO0001-MM|6f1d2c3b-0001-4d5e-8f90-a1b2c3d4e5f6|demo0001";
    pub const LEANX_OPS_TOKEN: &str = "LP-DEMO0002-MM|6f1d2c3b-0002-4d5e-8f90-a1b2c3d4e5f6|demo0002";
    /// The Hash Key LeanX callbacks are signed with (HS256).
    pub const LEANX_HASH_KEY: &str = "demo-leanx-hash-key-0001";
    pub const LUXTAK_APP_ID: &str = "DEMO-LUXTAK-APP-0001";
    pub const LUXTAK_APP_KEY: &str = "demo-luxtak-app-key";
    pub const IBANERA_USERNAME: &str = "demo-treasury";
    pub const IBANERA_PASSWORD: &str = "demo-password";
    /// Base32, as Ibanera hands out shared secrets.
    pub const IBANERA_TOTP_SECRET: &str = "JBSWY3DPEHPK3PXP";
    pub const YEDPAY_ACCESS_TOKEN: &str = "demo-yedpay-personal-token";
    pub const YEDPAY_COMPANY_ID: &str = "JwoMPpKy";
}

fn d(text: &str) -> Decimal {
    crate::domain::parse_decimal(text).expect("demo amounts are decimals")
}

/// A few cents (or satoshis) of movement per minute, deterministic: `base + ((minute * seed)
/// mod 17) units of 10^-scale`, keeping the base's scale. Minute 0 is the base itself (the
/// documented examples' figures).
pub fn drift(base: &str, minute: u64, seed: u64) -> Decimal {
    let base = d(base);
    let units = (minute.wrapping_mul(seed) % 17) as i64;
    let mut moved = base + Decimal::new(units, base.scale());
    moved.rescale(base.scale());
    moved
}

/// LeanX pools per token: (transaction, prefund).
pub fn leanx_pools(token: &str, minute: u64) -> Option<(Decimal, Decimal)> {
    match token {
        // The documented example's figures, drifting.
        credentials::LEANX_MAIN_TOKEN => Some((drift("26.05", minute, 3), drift("393.63", minute, 5))),
        credentials::LEANX_OPS_TOKEN => Some((drift("1250.00", minute, 7), drift("8400.50", minute, 11))),
        _ => None,
    }
}

pub struct LeanxPayout {
    pub token: &'static str,
    pub id: &'static str,
    pub external_ref: &'static str,
    pub status: &'static str,
    pub value: &'static str,
    pub fee: &'static str,
    pub created_at: &'static str,
    pub updated_at: &'static str,
    pub error: Option<(&'static str, &'static str)>,
}

pub const LEANX_PAYOUTS: [LeanxPayout; 5] = [
    // The documented example (docs/leanx-payout-status.txt).
    LeanxPayout {
        token: credentials::LEANX_MAIN_TOKEN,
        id: "PAYOUT-A9D5:174307-LEANX",
        external_ref: "INVOICE1234",
        status: "SUCCESS",
        value: "13.00",
        fee: "0.00",
        created_at: "2023-12-05T17:43:07",
        updated_at: "2023-12-05T17:44:05",
        error: None,
    },
    LeanxPayout {
        token: credentials::LEANX_MAIN_TOKEN,
        id: "PAYOUT-B7E1:091512-LEANX",
        external_ref: "INVOICE2001",
        status: "PENDING",
        value: "250.00",
        fee: "1.00",
        created_at: "2026-11-20T09:15:12",
        updated_at: "2026-11-20T09:15:12",
        error: None,
    },
    LeanxPayout {
        token: credentials::LEANX_MAIN_TOKEN,
        id: "PAYOUT-C2F4:101030-LEANX",
        external_ref: "INVOICE2002",
        status: "STATUS_PENDING_APPROVAL",
        value: "5000.00",
        fee: "1.00",
        created_at: "2026-11-20T10:10:30",
        updated_at: "2026-11-20T10:11:02",
        error: None,
    },
    // The documented FAILED example's error object.
    LeanxPayout {
        token: credentials::LEANX_MAIN_TOKEN,
        id: "PAYOUT-D8A3:112045-LEANX",
        external_ref: "INVOICE2003",
        status: "FAILED",
        value: "75.50",
        fee: "0.00",
        created_at: "2026-11-20T11:20:45",
        updated_at: "2026-11-20T11:21:10",
        error: Some(("77", "Account Verification Failed. Please Try Again")),
    },
    LeanxPayout {
        token: credentials::LEANX_OPS_TOKEN,
        id: "PAYOUT-E1B9:080000-LEANX",
        external_ref: "OPS-0042",
        status: "SUCCESS",
        value: "1200.00",
        fee: "1.00",
        created_at: "2026-11-21T08:00:00",
        updated_at: "2026-11-21T08:00:41",
        error: None,
    },
];

/// Luxtak balances: (currency, amount), strings with 2 decimals (or "0").
pub fn luxtak_balances(minute: u64) -> Vec<(&'static str, String)> {
    vec![
        ("USD", drift("551.38", minute, 13).to_string()),
        ("BRL", drift("99002.23", minute, 17).to_string()),
        ("MXN", drift("15230.75", minute, 19).to_string()),
        ("EUR", "0".to_owned()),
        ("GBP", "0".to_owned()),
    ]
}

pub struct LuxtakPayout {
    pub payout_id: &'static str,
    pub custom_code: &'static str,
    pub status: &'static str,
    pub amount: &'static str,
    pub fee: &'static str,
    pub currency: &'static str,
    pub create_time: i64,
    pub update_time: i64,
    pub remark: &'static str,
}

pub const LUXTAK_PAYOUTS: [LuxtakPayout; 5] = [
    LuxtakPayout {
        payout_id: "TS2026112009000110001",
        custom_code: "LUX-ORDER-1001",
        status: "IN_PROCESSING",
        amount: "150.00",
        fee: "1.50",
        currency: "BRL",
        create_time: 1_795_165_201,
        update_time: 1_795_165_201,
        remark: "",
    },
    LuxtakPayout {
        payout_id: "TS2026112009300110002",
        custom_code: "LUX-ORDER-1002",
        status: "PROCESSING",
        amount: "980.40",
        fee: "2.00",
        currency: "MXN",
        create_time: 1_795_167_001,
        update_time: 1_795_167_121,
        remark: "",
    },
    LuxtakPayout {
        payout_id: "TS2026112010000110003",
        custom_code: "LUX-ORDER-1003",
        status: "PAID",
        amount: "10.00",
        fee: "0.35",
        currency: "BRL",
        create_time: 1_795_168_801,
        update_time: 1_795_169_101,
        remark: "",
    },
    LuxtakPayout {
        payout_id: "TS2026112010300110004",
        custom_code: "LUX-ORDER-1004",
        status: "REJECTED",
        amount: "320.00",
        fee: "0.00",
        currency: "BRL",
        create_time: 1_795_170_601,
        update_time: 1_795_170_660,
        remark: "CPF Verify Failed",
    },
    LuxtakPayout {
        payout_id: "TS2026112011000110005",
        custom_code: "LUX-ORDER-1005",
        status: "REFUNDED",
        amount: "45.90",
        fee: "0.50",
        currency: "MXN",
        create_time: 1_795_172_401,
        update_time: 1_795_258_801,
        remark: "Refunded by the recipient bank",
    },
];

/// Ibanera asset accounts: (id, asset, total, available, pending, suppressed). JSON numbers.
pub fn ibanera_accounts(minute: u64) -> Vec<(u32, &'static str, Decimal, Decimal, Decimal, bool)> {
    let usd_pending = d("249.50");
    let usd_available = drift("125000.50", minute, 23);
    vec![
        (1000, "USD", usd_available + usd_pending, usd_available, usd_pending, false),
        (1001, "EUR", drift("48250.00", minute, 29), drift("48250.00", minute, 29), d("0.00"), false),
        (1002, "USDC", drift("1520.12345678", minute, 31), drift("1520.12345678", minute, 31), d("0.00000000"), false),
        (1003, "BTC", d("0.05000000"), d("0.05000000"), d("0.00000000"), false),
        (1004, "GBP", d("310.00"), d("310.00"), d("0.00"), true),
    ]
}

/// Yedpay balances per currency: (total 4 dp, available, ledger, locked, holding).
pub fn yedpay_balance(currency: &str, minute: u64) -> Option<(Decimal, Decimal, Decimal, Decimal, Decimal)> {
    let (total, available, ledger, locked, holding) = match currency {
        // The documented example: total 17.4781, 4 decimals; the rest 2.
        "HKD" => ("17.4781", "17.47", "0.00", "0.00", "0.00"),
        "USD" => ("2500.1250", "2200.00", "150.00", "100.00", "50.12"),
        _ => return None,
    };
    let shift = drift("0.00", minute, 37);
    Some((d(total) + shift, d(available) + shift, d(ledger), d(locked), d(holding)))
}

pub struct YedpaySettlement {
    pub id: &'static str,
    pub transaction_id: &'static str,
    pub status: &'static str,
    pub currency: &'static str,
    pub amount: &'static str,
    pub fee: &'static str,
    pub created_at: &'static str,
    pub updated_at: &'static str,
    pub reason: &'static str,
}

pub const YEDPAY_SETTLEMENTS: [YedpaySettlement; 6] = [
    YedpaySettlement {
        id: "STL-0001",
        transaction_id: "YTX-90001",
        status: "settlement_requested",
        currency: "HKD",
        amount: "1000.00",
        fee: "5.00",
        created_at: "2026-11-20 10:00:00",
        updated_at: "2026-11-20 10:00:00",
        reason: "",
    },
    YedpaySettlement {
        id: "STL-0002",
        transaction_id: "YTX-90002",
        status: "in_progress_settlement",
        currency: "HKD",
        amount: "2500.00",
        fee: "5.00",
        created_at: "2026-11-20 11:00:00",
        updated_at: "2026-11-20 12:30:00",
        reason: "",
    },
    YedpaySettlement {
        id: "STL-0003",
        transaction_id: "YTX-90003",
        status: "settled",
        currency: "HKD",
        amount: "800.00",
        fee: "5.00",
        created_at: "2026-11-19 09:00:00",
        updated_at: "2026-11-19 17:45:00",
        reason: "",
    },
    YedpaySettlement {
        id: "STL-0004",
        transaction_id: "YTX-90004",
        status: "cancelled_settlement",
        currency: "USD",
        amount: "120.00",
        fee: "1.00",
        created_at: "2026-11-18 15:00:00",
        updated_at: "2026-11-18 16:00:00",
        reason: "Bank account name mismatch",
    },
    YedpaySettlement {
        id: "STL-0005",
        transaction_id: "YTX-90005",
        status: "reverse_settlement",
        currency: "HKD",
        amount: "60.00",
        fee: "5.00",
        created_at: "2026-11-17 10:00:00",
        updated_at: "2026-11-17 10:20:00",
        reason: "Reversed by the merchant",
    },
    // The settlement-list example's spelling.
    YedpaySettlement {
        id: "STL-0006",
        transaction_id: "YTX-90006",
        status: "canceled",
        currency: "HKD",
        amount: "30.00",
        fee: "5.00",
        created_at: "2026-11-16 10:00:00",
        updated_at: "2026-11-16 10:05:00",
        reason: "",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_moves_a_little_and_keeps_the_scale() {
        let a = drift("393.63", 0, 5);
        let b = drift("393.63", 1, 5);
        assert_eq!(a.to_string(), "393.63", "minute 0 is the documented figure");
        assert_ne!(a, b);
        assert_eq!(a.scale(), 2);
        assert!((b - d("393.63")).abs() < d("0.17"));
        assert_eq!(drift("1520.12345678", 3, 31).scale(), 8);
    }
}
