// The web app's words, in English and Simplified Chinese (NextChat's first language).
// The browser's language picks one; the switch in the header overrides it (kept locally).

const en = {
  signIn: "Sign in", signUp: "Create account", signOut: "Sign out", email: "Email",
  password: "Password", newPassword: "New password", currentPassword: "Current password",
  forgot: "Forgot your password?", haveAccount: "Already have an account? Sign in",
  noAccount: "No account yet? Create one", registrationClosed: "This server does not accept new accounts.",
  forgotTitle: "Reset your password", forgotHint: "We will mail you a link to choose a new password.",
  sendLink: "Send the link", linkSent: "If that address has an account, a link is on its way. It works once.",
  resetTitle: "Choose a new password", resetDone: "Your password is changed and every device is signed out. Sign in again.",
  backToSignIn: "Back to sign in", passwordRules: "At least 10 characters; not a common password.",
  devices: "Devices", appPasswords: "NextChat", settings: "Sync settings", account: "Account",
  live: "live", offline: "offline", connecting: "connecting",
  thisDevice: "this device", created: "Signed in", lastSeen: "Last seen", revoke: "Remove",
  confirmRevoke: "Remove “{name}”? It is signed out at once, and the app passwords made on it stop working.",
  signOutOthers: "Sign out everywhere else", othersSignedOut: "Every other device is signed out.",
  appPasswordsTitle: "App passwords for NextChat",
  e2eeTitle: "This account is end-to-end encrypted",
  e2eeNextchat: "Its conversations are stored as ciphertext only your nextsync clients can read with the passphrase. NextChat's Cloud Sync cannot read them: it will show \"Sync Fail\" for this account.",
  appPasswordsHint: "NextChat's Cloud Sync keeps a password in its settings. Give each NextChat its own app password: you can remove one without touching the others.",
  label: "Label", labelPlaceholder: "NextChat on my laptop", create: "Create", confirmPassword: "Your account password",
  passwordNeeded: "You signed in more than 10 minutes ago: type your account password to create an app password.",
  shownOnce: "Copy it now: it is shown only this once.", copy: "Copy", copied: "Copied",
  lastUsed: "Last used", never: "never", confirmDelete: "Remove the app password “{name}”? NextChat using it stops syncing.",
  setupTitle: "Type this into NextChat: Settings → Cloud Sync",
  proxyWebdav: "WebDAV (works from any NextChat: web, desktop app, the public demo)",
  proxyUpstash: "UpStash (same, through NextChat's UpStash settings)",
  plainDav: "WebDAV behind your own NextChat deployment",
  plainDavHint: "Your NextChat server's operator allows this server once:",
  syncType: "Sync Type", corsProxy: "Enable CORS Proxy", on: "on", proxyEndpoint: "Proxy Endpoint",
  webdavEndpoint: "WebDAV Endpoint", userName: "User Name", upstashUrl: "UpStash Redis REST Url",
  backupName: "Backup Name", upstashToken: "UpStash Redis REST Token", empty: "(empty)",
  pressSync: "Then press Sync. NextChat syncs only when you press it.",
  none: "None yet.", syncSettingsTitle: "What NextChat syncs",
  syncSettingsLabel: "Sync NextChat's settings",
  syncSettingsHint: "Theme, models, language and the rest of NextChat's settings follow you. Off: each device keeps its own.",
  syncSecretsLabel: "Sync API keys",
  syncSecretsHint: "Your provider API keys and access code travel between your devices, sealed at rest with this server's key. Off: keys stay on each device and never reach the server.",
  saved: "Saved.", accountTitle: "Your account", changePassword: "Change password",
  passwordChanged: "Password changed. Every other device is signed out, and every app password removed.",
  deleteAccount: "Delete account", deleteHint: "Deletes every conversation, device and app password on this server. Type your email to confirm.",
  deleted: "Your account is deleted.", language: "Language",
  somethingWrong: "Something went wrong: {message}", signedOutElsewhere: "This device was signed out.",
  conflicts: "Conflicts", conflictsHint: "When two devices changed the same thing before seeing each other's change, the later one won everywhere and the other is kept here. Nothing you typed is lost: keep the winner, take the other, or write what it should be.",
  noConflicts: "No conflicts. Every device agrees.", keptSide: "On every device now", lostSide: "Lost the race",
  keep: "Keep", takeOther: "Take the other", edit: "Edit", save: "Save", yourValue: "Your value",
  field: "Field", deletedValue: "(deleted)", notJson: "This value must be JSON.",
  backups: "Backups", snapshotsTitle: "NextChat's last uploads",
  snapshotsHint: "nextsync keeps the last 20 states NextChat uploaded. Restoring one merges it back: whatever it holds that is missing now comes back, including what was deleted since. Nothing is removed.",
  snapshotLine: "from {source} · {sessions} conversations, {messages} messages · {size}",
  restore: "Restore", confirmRestore: "Bring back the {sessions} conversations and {messages} messages of {when}? Whatever is missing now (deleted ones too) comes back on every device; nothing is removed.",
  mergeSummary: "Done: {created} added, {edited} changed.",
  exportTitle: "Export", exportHint: "A NextChat backup file of everything here (never your API keys). NextChat's Settings → Import reads it.",
  export: "Download the backup", importTitle: "Import", importHint: "Merge a NextChat backup file (its Export) into this account. Nothing here is removed.",
  importFile: "Backup file", import: "Import",
  conversations: "Conversations", searchTitles: "Search titles", noConversations: "No conversations yet. Sync NextChat to see them here.",
  pickConversation: "Pick a conversation.", you: "You", assistant: "Assistant", polling: "polling",
  kindBrowser: "browser", kindCli: "command line", kindApp: "app", kindOther: "device", kindAppPassword: "NextChat app password",
  trash: "Trash", trashHint: "Deleted conversations, messages, masks and prompts wait here before they are gone for good. Restoring one brings it back on every device, with everything deleted together with it.",
  trashEmpty: "The trash is empty.", loadMore: "Show more", deletedWith: "with {count} more deleted together",
  deletedAt: "deleted {when}", expiresAt: "gone for good {when}", deleteForever: "Delete forever",
  confirmPurge: "Delete “{name}” for good ({count} records)? It cannot be restored afterwards.",
  emptyTrash: "Empty the trash", confirmEmptyTrash: "Delete everything in the trash for good? It cannot be restored afterwards.",
  restoredCount: "{count} restored on every device.", purgedCount: "{count} deleted for good.",
  conversationKind: "Conversation", messageKind: "Message", maskKind: "Mask", promptKind: "Prompt",
  restoreTitle: "Restore to a moment", restoreHint: "Bring your account back to how it was at a moment of the last days: what was deleted since comes back, what changed returns to its old values, and what was created since moves to the trash. See what would change first.",
  restoreAt: "Moment", restorePreview: "Show what would change", restoreNothing: "Nothing changed since that moment.",
  restorePlan: "{restored} come back, {reverted} return to their old values, {trashed} move to the trash.",
  action_restore: "Comes back", action_revert: "Old values", action_trash: "To the trash",
  restoreConfirm: "Restore ({count} records)", restoreDone: "Restored to {when} on every device.",
  beyondRetention: "The history kept does not reach back that far.",
  beingWritten: "being written on {device}…",
  healthTitle: "Sync health", healthHint: "Checks that what this page holds is exactly what the server holds, record by record (by their digests), and fetches again only what differs.",
  verifyNow: "Verify now", healthNever: "Not verified yet.",
  healthOk: "All {count} collections match the server (verified {when}).",
  healthRepaired: "Repaired {count} records in {collections}; everything matches now (verified {when}).",
  healthRepairedOne: "Repaired 1 record in {collections}; everything matches now (verified {when}).",
  healthBusy: "The account kept changing while it was checked; try again.",
};

const zh = {
  signIn: "登录", signUp: "创建账号", signOut: "退出登录", email: "邮箱",
  password: "密码", newPassword: "新密码", currentPassword: "当前密码",
  forgot: "忘记密码？", haveAccount: "已有账号？登录", noAccount: "还没有账号？创建一个",
  registrationClosed: "此服务器不接受新账号。",
  forgotTitle: "重置密码", forgotHint: "我们会发送一封邮件，其中的链接可用于设置新密码。",
  sendLink: "发送链接", linkSent: "如果该邮箱有账号，链接已在路上。链接只能使用一次。",
  resetTitle: "设置新密码", resetDone: "密码已更改，所有设备均已退出。请重新登录。",
  backToSignIn: "返回登录", passwordRules: "至少 10 个字符；不能是常见密码。",
  devices: "设备", appPasswords: "NextChat", settings: "同步设置", account: "账号",
  live: "实时", offline: "离线", connecting: "连接中",
  thisDevice: "本设备", created: "登录于", lastSeen: "最近活动", revoke: "移除",
  confirmRevoke: "移除“{name}”？它会立即退出，在其上创建的应用密码也会失效。",
  signOutOthers: "退出其他所有设备", othersSignedOut: "其他设备均已退出。",
  appPasswordsTitle: "NextChat 应用密码",
  e2eeTitle: "此账号已启用端到端加密",
  e2eeNextchat: "对话以密文保存，只有输入口令的 nextsync 客户端才能读取。NextChat 的云同步无法读取，因此对此账号会显示“同步失败”。",
  appPasswordsHint: "NextChat 的云同步会在设置中保存一个密码。为每个 NextChat 单独创建应用密码：移除其中一个不会影响其他。",
  label: "名称", labelPlaceholder: "笔记本上的 NextChat", create: "创建", confirmPassword: "账号密码",
  passwordNeeded: "你登录已超过 10 分钟：请输入账号密码以创建应用密码。",
  shownOnce: "请立即复制：它只显示这一次。", copy: "复制", copied: "已复制",
  lastUsed: "最近使用", never: "从未", confirmDelete: "移除应用密码“{name}”？使用它的 NextChat 将停止同步。",
  setupTitle: "在 NextChat 中填写：设置 → 云同步",
  proxyWebdav: "WebDAV（适用于任何 NextChat：网页版、桌面版、公共演示站）",
  proxyUpstash: "UpStash（同上，使用 NextChat 的 UpStash 设置）",
  plainDav: "通过你自己部署的 NextChat 使用 WebDAV",
  plainDavHint: "你的 NextChat 服务器管理员需要允许此服务器一次：",
  syncType: "同步类型", corsProxy: "启用代理", on: "开启", proxyEndpoint: "代理地址",
  webdavEndpoint: "WebDAV 地址", userName: "用户名", upstashUrl: "UpStash Redis REST Url",
  backupName: "备份名称", upstashToken: "UpStash Redis REST Token", empty: "（留空）",
  pressSync: "然后点击同步。NextChat 只在你点击时同步。",
  none: "暂无。", syncSettingsTitle: "NextChat 同步哪些内容",
  syncSettingsLabel: "同步 NextChat 的设置",
  syncSettingsHint: "主题、模型、语言等 NextChat 设置在设备间同步。关闭：每台设备保留自己的设置。",
  syncSecretsLabel: "同步 API 密钥",
  syncSecretsHint: "你的服务商 API 密钥和访问码在设备间同步，并使用此服务器的密钥加密存储。关闭：密钥只保存在各设备上，不会发送到服务器。",
  saved: "已保存。", accountTitle: "你的账号", changePassword: "修改密码",
  passwordChanged: "密码已修改。其他设备均已退出，所有应用密码已移除。",
  deleteAccount: "删除账号", deleteHint: "删除此服务器上的所有对话、设备和应用密码。输入你的邮箱以确认。",
  deleted: "你的账号已删除。", language: "语言",
  somethingWrong: "出错了：{message}", signedOutElsewhere: "此设备已退出登录。",
  conflicts: "冲突", conflictsHint: "当两台设备在看到对方的修改之前改了同一处内容时，较晚的修改在所有设备上生效，另一个保存在这里。你输入的内容不会丢失：保留当前值、采用另一个，或写下正确的内容。",
  noConflicts: "没有冲突。所有设备一致。", keptSide: "当前所有设备上的值", lostSide: "被覆盖的值",
  keep: "保留", takeOther: "采用另一个", edit: "编辑", save: "保存", yourValue: "你的内容",
  field: "字段", deletedValue: "（已删除）", notJson: "此值必须是 JSON。",
  backups: "备份", snapshotsTitle: "NextChat 最近的上传",
  snapshotsHint: "nextsync 保留 NextChat 最近上传的 20 个状态。恢复其中一个会将其合并回来：其中有而现在缺少的内容（包括之后删除的）都会回来。不会删除任何内容。",
  snapshotLine: "来自 {source} · {sessions} 个对话，{messages} 条消息 · {size}",
  restore: "恢复", confirmRestore: "恢复 {when} 的 {sessions} 个对话和 {messages} 条消息？现在缺少的内容（包括已删除的）会回到所有设备；不会删除任何内容。",
  mergeSummary: "完成：新增 {created} 项，修改 {edited} 项。",
  exportTitle: "导出", exportHint: "包含这里所有内容的 NextChat 备份文件（不含你的 API 密钥）。NextChat 的 设置 → 导入 可以读取。",
  export: "下载备份", importTitle: "导入", importHint: "将 NextChat 备份文件（其导出）合并到此账号。不会删除这里的任何内容。",
  importFile: "备份文件", import: "导入",
  conversations: "对话", searchTitles: "搜索标题", noConversations: "还没有对话。同步 NextChat 后会显示在这里。",
  pickConversation: "选择一个对话。", you: "你", assistant: "助手", polling: "轮询",
  kindBrowser: "浏览器", kindCli: "命令行", kindApp: "应用", kindOther: "设备", kindAppPassword: "NextChat 应用密码",
  trash: "回收站", trashHint: "删除的对话、消息、面具和提示词会先保存在这里，过期后才彻底删除。恢复一项会在所有设备上找回它，以及与它一起删除的内容。",
  trashEmpty: "回收站是空的。", loadMore: "显示更多", deletedWith: "另有 {count} 项一起删除",
  deletedAt: "删除于 {when}", expiresAt: "将于 {when} 彻底删除", deleteForever: "彻底删除",
  confirmPurge: "彻底删除“{name}”（{count} 条记录）？之后无法恢复。",
  emptyTrash: "清空回收站", confirmEmptyTrash: "彻底删除回收站中的所有内容？之后无法恢复。",
  restoredCount: "已在所有设备上恢复 {count} 项。", purgedCount: "已彻底删除 {count} 项。",
  conversationKind: "对话", messageKind: "消息", maskKind: "面具", promptKind: "提示词",
  restoreTitle: "恢复到某个时间点", restoreHint: "把账户恢复到最近几天内某一时刻的样子：之后删除的会回来，之后修改的会恢复旧值，之后新建的会移到回收站。先查看将会发生的变化。",
  restoreAt: "时间点", restorePreview: "查看将会发生的变化", restoreNothing: "从那时起没有任何变化。",
  restorePlan: "{restored} 项会回来，{reverted} 项恢复旧值，{trashed} 项移到回收站。",
  action_restore: "找回", action_revert: "恢复旧值", action_trash: "移到回收站",
  restoreConfirm: "恢复（{count} 条记录）", restoreDone: "已在所有设备上恢复到 {when}。",
  beyondRetention: "保留的历史记录到不了那么早。",
  beingWritten: "正在 {device} 上生成…",
  healthTitle: "同步健康", healthHint: "逐条（按摘要）检查本页面持有的内容与服务器完全一致，只重新获取不同的部分。",
  verifyNow: "立即校验", healthNever: "尚未校验。",
  healthOk: "全部 {count} 个集合与服务器一致（校验于 {when}）。",
  healthRepaired: "已修复 {collections} 中的 {count} 条记录；现在全部一致（校验于 {when}）。",
  healthRepairedOne: "已修复 {collections} 中的 1 条记录；现在全部一致（校验于 {when}）。",
  healthBusy: "校验期间账户一直在变化；请重试。",
};

const dictionaries = { en, zh };

function pick() {
  const kept = localStorage.getItem("nextsync.lang");
  if (kept && dictionaries[kept]) return kept;
  return (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
}

let lang = pick();

export function language() {
  return lang;
}

export function setLanguage(next) {
  if (!dictionaries[next]) return;
  lang = next;
  localStorage.setItem("nextsync.lang", next);
  document.documentElement.lang = next === "zh" ? "zh-CN" : "en";
}

/** The text for `key`, with `{name}` placeholders filled from `values`. */
export function t(key, values = {}) {
  const text = dictionaries[lang][key] ?? en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(values[name] ?? ""));
}

setLanguage(lang);
