//! The store contract: every behaviour the server relies on, run against SQLite and
//! PostgreSQL alike (`<test>::sqlite`, `<test>::postgres`).

use nextsync_core::account::Email;
use nextsync_core::ids::{AppPasswordId, DeviceId, TokenHash, UserId};
use nextsync_core::secret::Secret;
use nextsync_core::time::Timestamp;
use nextsync_store::accounts::{
    DeviceEnd, NewAppPassword, NewDevice, NewRefreshToken, NewUser, RefreshOutcome, ResetOutcome,
};
use nextsync_store::{Store, StoreError};
use nextsync_testkit::{TestDb, both_backends};
use std::sync::Arc;

fn hash(n: u8) -> TokenHash {
    let mut bytes = [0u8; 32];
    bytes[0] = n;
    bytes[31] = 0xA5;
    TokenHash(bytes)
}

fn new_user(email: &str) -> NewUser {
    NewUser {
        id: UserId::new(),
        email: Email::parse(email).expect("email"),
        password_hash: Secret::new("$argon2id$fake"),
        created_at: Timestamp::now(),
    }
}

fn refresh(n: u8, now: Timestamp) -> NewRefreshToken {
    NewRefreshToken {
        hash: hash(n),
        created_at: now,
        expires_at: now.plus_secs(3600),
    }
}

fn device(user: UserId, n: u8, now: Timestamp) -> NewDevice {
    NewDevice {
        kind: Default::default(),
        user_id: user,
        device_id: DeviceId::new(),
        name: format!("device {n}"),
        refresh: refresh(n, now),
    }
}

async fn user_with_device(store: &dyn Store, email: &str) -> (UserId, DeviceId) {
    let user = new_user(email);
    let dev = device(user.id, 1, Timestamp::now());
    store.create_user(&user, Some(&dev)).await.expect("create");
    (user.id, dev.device_id)
}

both_backends!(
    a_taken_email_is_a_conflict,
    devices_are_listed_touched_and_revoked_per_user,
    a_refresh_token_rotates_once_and_reuse_revokes_its_family,
    concurrent_refreshes_with_one_token_rotate_exactly_once,
    an_expired_refresh_token_is_invalid,
    a_password_change_signs_out_all_but_the_kept_device,
    a_reset_token_works_once_and_signs_everyone_out,
    an_expired_reset_token_is_expired,
    app_passwords_are_scoped_to_their_user,
    app_passwords_end_with_the_password_and_with_the_device_that_made_them,
    a_disabled_user_has_no_active_devices_or_app_passwords,
    deleting_a_user_leaves_no_row_behind,
);

async fn a_taken_email_is_a_conflict(db: TestDb) {
    let store = db.store().await;
    store
        .create_user(&new_user("ann@example.org"), None)
        .await
        .expect("create");
    let again = store.create_user(&new_user("ANN@example.org"), None).await;
    assert!(matches!(again, Err(StoreError::Conflict { .. })), "{again:?}");
    let found = store
        .user_by_email(&Email::parse("ann@example.org").expect("email"))
        .await
        .expect("read");
    assert!(found.is_some());
    assert_eq!(store.list_users().await.expect("list").len(), 1);
}

async fn devices_are_listed_touched_and_revoked_per_user(db: TestDb) {
    let store = db.store().await;
    let (ann, ann_laptop) = user_with_device(&*store, "ann@example.org").await;
    let (bob, bob_phone) = user_with_device(&*store, "bob@example.org").await;
    let ann_phone = device(ann, 2, Timestamp::now());
    store.add_device(&ann_phone).await.expect("add");

    let listed: Vec<_> = store
        .list_devices(ann)
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(listed, vec![ann_laptop, ann_phone.device_id]);
    assert_eq!(store.count_active_devices().await.expect("count"), 3);

    let later = Timestamp::now().plus_secs(120);
    store.touch_device(ann, ann_laptop, later).await.expect("touch");
    let status = store
        .device_status(ann, ann_laptop)
        .await
        .expect("status")
        .expect("exists");
    assert_eq!(status.last_seen_at, later);
    assert!(status.is_active());

    // Another user's device is invisible: no status, no revocation.
    assert_eq!(store.device_status(ann, bob_phone).await.expect("status"), None);
    assert!(
        !store
            .revoke_device(ann, bob_phone, Timestamp::now(), DeviceEnd::SignOut)
            .await
            .expect("revoke")
    );
    assert!(
        store
            .device_status(bob, bob_phone)
            .await
            .expect("status")
            .expect("exists")
            .is_active()
    );

    assert!(
        store
            .revoke_device(ann, ann_laptop, Timestamp::now(), DeviceEnd::SignOut)
            .await
            .expect("revoke")
    );
    assert!(
        !store
            .revoke_device(ann, ann_laptop, Timestamp::now(), DeviceEnd::SignOut)
            .await
            .expect("revoke twice")
    );
    assert!(
        store
            .device_status(ann, ann_laptop)
            .await
            .expect("status")
            .expect("exists")
            .revoked
    );
    let listed: Vec<_> = store
        .list_devices(ann)
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(listed, vec![ann_phone.device_id]);
}

async fn a_refresh_token_rotates_once_and_reuse_revokes_its_family(db: TestDb) {
    let store = db.store().await;
    let (user, dev) = user_with_device(&*store, "ann@example.org").await;
    let now = Timestamp::now();
    assert_eq!(
        store
            .rotate_refresh_token(user, &hash(1), &refresh(2, now))
            .await
            .expect("rotate"),
        RefreshOutcome::Rotated { device_id: dev }
    );
    assert_eq!(
        store
            .rotate_refresh_token(user, &hash(2), &refresh(3, now))
            .await
            .expect("rotate"),
        RefreshOutcome::Rotated { device_id: dev }
    );
    // Token 1 again: theft. The family dies, including the newest token 3.
    assert_eq!(
        store
            .rotate_refresh_token(user, &hash(1), &refresh(4, now))
            .await
            .expect("reuse"),
        RefreshOutcome::Reused { device_id: dev }
    );
    assert!(
        store
            .device_status(user, dev)
            .await
            .expect("status")
            .expect("exists")
            .revoked
    );
    assert_eq!(
        store
            .rotate_refresh_token(user, &hash(3), &refresh(5, now))
            .await
            .expect("newest"),
        RefreshOutcome::Invalid
    );
    assert_eq!(
        store
            .rotate_refresh_token(user, &hash(99), &refresh(6, now))
            .await
            .expect("unknown"),
        RefreshOutcome::Invalid
    );
    // A token is only found under its own user.
    let (other, _) = user_with_device(&*store, "bob@example.org").await;
    assert_eq!(
        store
            .rotate_refresh_token(other, &hash(3), &refresh(7, now))
            .await
            .expect("foreign"),
        RefreshOutcome::Invalid
    );
}

async fn concurrent_refreshes_with_one_token_rotate_exactly_once(db: TestDb) {
    let store: Arc<dyn Store> = db.store().await;
    let (user, _) = user_with_device(&*store, "ann@example.org").await;
    let now = Timestamp::now();
    let attempts = (10..18u8).map(|n| {
        let store = store.clone();
        tokio::spawn(async move { store.rotate_refresh_token(user, &hash(1), &refresh(n, now)).await })
    });
    let outcomes: Vec<_> = futures_join(attempts).await;
    let rotated = outcomes
        .iter()
        .filter(|o| matches!(o, RefreshOutcome::Rotated { .. }))
        .count();
    assert_eq!(rotated, 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|o| !matches!(o, RefreshOutcome::Invalid)),
        "{outcomes:?}"
    );
}

async fn futures_join(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<Result<RefreshOutcome, StoreError>>>,
) -> Vec<RefreshOutcome> {
    let mut out = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        out.push(task.await.expect("join").expect("rotate"));
    }
    out
}

async fn an_expired_refresh_token_is_invalid(db: TestDb) {
    let store = db.store().await;
    let user = new_user("ann@example.org");
    let past = Timestamp::now().minus_secs(7200);
    let dev = device(user.id, 1, past);
    store.create_user(&user, Some(&dev)).await.expect("create");
    assert_eq!(
        store
            .rotate_refresh_token(user.id, &hash(1), &refresh(2, Timestamp::now()))
            .await
            .expect("rotate"),
        RefreshOutcome::Invalid
    );
}

async fn a_password_change_signs_out_all_but_the_kept_device(db: TestDb) {
    let store = db.store().await;
    let (user, laptop) = user_with_device(&*store, "ann@example.org").await;
    let phone = device(user, 2, Timestamp::now());
    store.add_device(&phone).await.expect("add");
    let (bob, bob_dev) = user_with_device(&*store, "bob@example.org").await;

    let changed = store
        .set_password(
            user,
            &Secret::new("$argon2id$new"),
            Some(laptop),
            Timestamp::now(),
        )
        .await;
    assert!(changed.expect("set"));
    assert!(
        store
            .device_status(user, laptop)
            .await
            .expect("status")
            .expect("exists")
            .is_active()
    );
    assert!(
        store
            .device_status(user, phone.device_id)
            .await
            .expect("status")
            .expect("exists")
            .revoked
    );
    assert!(
        store
            .device_status(bob, bob_dev)
            .await
            .expect("status")
            .expect("exists")
            .is_active()
    );
    let stored = store.user_by_id(user).await.expect("read").expect("exists");
    assert_eq!(stored.password_hash.expose(), "$argon2id$new");

    store
        .set_password(user, &Secret::new("$argon2id$newer"), None, Timestamp::now())
        .await
        .expect("set");
    assert!(
        store
            .device_status(user, laptop)
            .await
            .expect("status")
            .expect("exists")
            .revoked
    );
    assert!(
        !store
            .set_password(UserId::new(), &Secret::new("x"), None, Timestamp::now())
            .await
            .expect("set")
    );
}

async fn a_reset_token_works_once_and_signs_everyone_out(db: TestDb) {
    let store = db.store().await;
    let (user, dev) = user_with_device(&*store, "ann@example.org").await;
    let now = Timestamp::now();
    store
        .create_password_reset(user, &hash(50), now, now.plus_secs(1800))
        .await
        .expect("create");
    store
        .create_password_reset(user, &hash(51), now, now.plus_secs(1800))
        .await
        .expect("create");
    let new_hash = Secret::new("$argon2id$reset");
    assert_eq!(
        store
            .consume_password_reset(user, &hash(50), &new_hash, now)
            .await
            .expect("consume"),
        ResetOutcome::Done
    );
    assert!(
        store
            .device_status(user, dev)
            .await
            .expect("status")
            .expect("exists")
            .revoked
    );
    assert_eq!(
        store
            .user_by_id(user)
            .await
            .expect("read")
            .expect("exists")
            .password_hash,
        new_hash
    );
    assert_eq!(
        store
            .consume_password_reset(user, &hash(50), &new_hash, now)
            .await
            .expect("again"),
        ResetOutcome::AlreadyUsed
    );
    // Other outstanding links die with the first use.
    assert_eq!(
        store
            .consume_password_reset(user, &hash(51), &new_hash, now)
            .await
            .expect("sibling"),
        ResetOutcome::AlreadyUsed
    );
    assert_eq!(
        store
            .consume_password_reset(user, &hash(52), &new_hash, now)
            .await
            .expect("unknown"),
        ResetOutcome::Unknown
    );
}

async fn an_expired_reset_token_is_expired(db: TestDb) {
    let store = db.store().await;
    let (user, dev) = user_with_device(&*store, "ann@example.org").await;
    let past = Timestamp::now().minus_secs(3600);
    store
        .create_password_reset(user, &hash(50), past, past.plus_secs(1800))
        .await
        .expect("create");
    assert_eq!(
        store
            .consume_password_reset(user, &hash(50), &Secret::new("x"), Timestamp::now())
            .await
            .expect("consume"),
        ResetOutcome::Expired
    );
    assert!(
        store
            .device_status(user, dev)
            .await
            .expect("status")
            .expect("exists")
            .is_active()
    );
}

async fn app_passwords_are_scoped_to_their_user(db: TestDb) {
    let store = db.store().await;
    let (ann, _) = user_with_device(&*store, "ann@example.org").await;
    let (bob, _) = user_with_device(&*store, "bob@example.org").await;
    let created = NewAppPassword {
        user_id: ann,
        id: AppPasswordId::new(),
        label: "NextChat".into(),
        secret_hash: hash(70),
        created_at: Timestamp::now(),
        created_by: DeviceId::new(),
    };
    store.create_app_password(&created).await.expect("create");
    let found = store
        .app_password_by_hash(ann, &hash(70))
        .await
        .expect("find")
        .expect("exists");
    assert_eq!(
        (found.id, found.label.as_str(), found.last_used_at),
        (created.id, "NextChat", None)
    );
    assert!(
        store
            .app_password_by_hash(bob, &hash(70))
            .await
            .expect("find")
            .is_none()
    );
    assert!(store.list_app_passwords(bob).await.expect("list").is_empty());
    assert!(!store.delete_app_password(bob, created.id).await.expect("delete"));

    let now = Timestamp::now();
    store
        .touch_app_password(ann, created.id, now)
        .await
        .expect("touch");
    let listed = store.list_app_passwords(ann).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_used_at, Some(now));

    assert!(store.delete_app_password(ann, created.id).await.expect("delete"));
    assert!(
        store
            .app_password_by_hash(ann, &hash(70))
            .await
            .expect("find")
            .is_none()
    );
}

async fn app_passwords_end_with_the_password_and_with_the_device_that_made_them(db: TestDb) {
    let store = db.store().await;
    let (user, laptop) = user_with_device(&*store, "ann@example.org").await;
    let now = Timestamp::now();
    let phone = device(user, 2, now);
    store.add_device(&phone).await.expect("add");
    let tablet = device(user, 3, now);
    store.add_device(&tablet).await.expect("add");
    let app_password = |n: u8, by: DeviceId| NewAppPassword {
        user_id: user,
        id: AppPasswordId::new(),
        label: format!("by device {n}"),
        secret_hash: hash(70 + n),
        created_at: now,
        created_by: by,
    };
    let labels = async || -> Vec<String> {
        let mut labels: Vec<String> = store
            .list_app_passwords(user)
            .await
            .expect("list")
            .into_iter()
            .map(|p| p.label)
            .collect();
        labels.sort();
        labels
    };
    for (n, by) in [(1, laptop), (2, phone.device_id), (3, tablet.device_id)] {
        store
            .create_app_password(&app_password(n, by))
            .await
            .expect("create");
    }
    // Signing out keeps what the device made; removing it does not.
    assert!(
        store
            .revoke_device(user, phone.device_id, now, DeviceEnd::SignOut)
            .await
            .expect("sign out")
    );
    assert!(
        store
            .revoke_device(user, tablet.device_id, now, DeviceEnd::Remove)
            .await
            .expect("remove")
    );
    assert_eq!(labels().await, ["by device 1", "by device 2"]);
    // A new password ends them all, the kept device's too.
    assert!(
        store
            .set_password(user, &Secret::new("$argon2id$new"), Some(laptop), now)
            .await
            .expect("set password")
    );
    assert!(labels().await.is_empty());
    // So does a reset.
    store
        .create_app_password(&app_password(4, laptop))
        .await
        .expect("create");
    store
        .create_password_reset(user, &hash(50), now, now.plus_secs(60))
        .await
        .expect("reset");
    assert_eq!(
        store
            .consume_password_reset(user, &hash(50), &Secret::new("$argon2id$reset"), now)
            .await
            .expect("consume"),
        ResetOutcome::Done
    );
    assert!(labels().await.is_empty());
}

async fn a_disabled_user_has_no_active_devices_or_app_passwords(db: TestDb) {
    let store = db.store().await;
    let (user, dev) = user_with_device(&*store, "ann@example.org").await;
    let app = NewAppPassword {
        user_id: user,
        id: AppPasswordId::new(),
        label: "x".into(),
        secret_hash: hash(70),
        created_at: Timestamp::now(),
        created_by: dev,
    };
    store.create_app_password(&app).await.expect("create");
    assert!(
        store
            .set_user_disabled(user, Some(Timestamp::now()))
            .await
            .expect("disable")
    );
    let status = store
        .device_status(user, dev)
        .await
        .expect("status")
        .expect("exists");
    assert!(status.user_disabled && !status.is_active());
    assert!(
        store
            .app_password_by_hash(user, &hash(70))
            .await
            .expect("find")
            .is_none()
    );
    assert_eq!(store.count_active_devices().await.expect("count"), 0);
    assert_eq!(
        store
            .rotate_refresh_token(user, &hash(1), &refresh(2, Timestamp::now()))
            .await
            .expect("rotate"),
        RefreshOutcome::Invalid
    );
    assert!(store.set_user_disabled(user, None).await.expect("enable"));
    assert!(
        store
            .app_password_by_hash(user, &hash(70))
            .await
            .expect("find")
            .is_some()
    );
}

async fn deleting_a_user_leaves_no_row_behind(db: TestDb) {
    let store = db.store().await;
    let (user, _) = user_with_device(&*store, "ann@example.org").await;
    let (bob, _) = user_with_device(&*store, "bob@example.org").await;
    let now = Timestamp::now();
    store.add_device(&device(user, 2, now)).await.expect("add");
    store
        .rotate_refresh_token(user, &hash(1), &refresh(3, now))
        .await
        .expect("rotate");
    store
        .create_password_reset(user, &hash(50), now, now.plus_secs(60))
        .await
        .expect("reset");
    store
        .create_app_password(&NewAppPassword {
            user_id: user,
            id: AppPasswordId::new(),
            label: "x".into(),
            secret_hash: hash(70),
            created_at: now,
            created_by: DeviceId::new(),
        })
        .await
        .expect("app password");
    assert!(db.rows_of_user(*user.as_uuid()).await >= 7);

    assert!(store.delete_user(user).await.expect("delete"));
    assert_eq!(db.rows_of_user(*user.as_uuid()).await, 0);
    assert!(
        db.rows_of_user(*bob.as_uuid()).await > 0,
        "other users are untouched"
    );
    assert!(!store.delete_user(user).await.expect("delete again"));
}
