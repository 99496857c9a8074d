# Sourced by scripts/test (needs its TEST_UID, TEST_GID, as_test_user, check).
# Issue #11: `grootfs delete-store` on a btrfs store with quotas on, with limited images in
# it, as the store's owner: it works, and leaves no qgroup of those images and no record
# of the gate's. A throwaway store (gdn setup --store), so no other suite's store is touched.
quota_delete_store_check() {
  local s=/var/lib/trellis/$TEST_UID/quota-del-store ok=1 i sv svs=() hex out
  local grootfs=(node dist/plugins/grootfs/main.js --store "$s")
  echo "== delete-store with quotas on (issue #11)"
  node dist/cmd/gdn.js setup --rootless-uid "$TEST_UID" --rootless-gid "$TEST_GID" --store "$s" --store-size-bytes $((1024 * 1024 * 1024)) </dev/null >/dev/null || ok=0
  [[ $(cat "$s/meta/driver" 2>/dev/null) == btrfs ]] || { echo "scripts/test: $s is not a btrfs store" >&2; ok=0; }
  for i in 1 2 3; do
    out=$(as_test_user "${grootfs[@]}" create --disk-limit-size-bytes $((64 * 1024 * 1024)) "/var/lib/trellis/$TEST_UID/rootfs" "qdel$i" </dev/null 2>&1) || { echo "scripts/test: create qdel$i: $out" >&2; ok=0; }
    sv=$(btrfs inspect-internal rootid "$s/images/qdel$i/rootfs" 2>/dev/null) && svs+=("$sv")
  done
  ((${#svs[@]} == 3)) || ok=0
  for sv in "${svs[@]}"; do
    btrfs qgroup show -re --raw "$s" | awk -v q="0/$sv" '$1 == q { f = 1 } END { exit !f }' || { echo "scripts/test: no qgroup 0/$sv before delete-store" >&2; ok=0; }
  done
  for i in 1 2 3; do
    hex=$(printf "qdel$i" | od -An -tx1 | tr -d ' \n')
    grep -qs " $hex\$" /var/lib/trellis/quota/"$TEST_UID"/*/r* || { echo "scripts/test: no gate record of qdel$i before delete-store" >&2; ok=0; }
  done
  out=$(as_test_user "${grootfs[@]}" delete-store </dev/null 2>&1) || { echo "scripts/test: delete-store: $out" >&2; ok=0; }
  [[ -z $(ls -A "$s" 2>/dev/null) ]] || { echo "scripts/test: left in $s: $(ls -A "$s")" >&2; ok=0; }
  for sv in "${svs[@]}"; do
    # a qgroup the kernel keeps for a deleted subvolume goes once the cleaner has run
    for _ in $(seq 60); do
      btrfs qgroup show -re --raw "$s" | awk -v q="0/$sv" '$1 == q { f = 1 } END { exit !f }' || break
      sleep 0.5
    done
    ! btrfs qgroup show -re --raw "$s" | awk -v q="0/$sv" '$1 == q { f = 1 } END { exit !f }' || { echo "scripts/test: qgroup 0/$sv is left" >&2; ok=0; }
  done
  for i in 1 2 3; do
    hex=$(printf "qdel$i" | od -An -tx1 | tr -d ' \n')
    ! grep -qs " $hex\$" /var/lib/trellis/quota/"$TEST_UID"/*/r* || { echo "scripts/test: the gate's record of qdel$i is left" >&2; ok=0; }
  done
  # the store is made again by the next setup (the boot unit's record of it stays)
  node dist/cmd/gdn.js setup --rootless-uid "$TEST_UID" --rootless-gid "$TEST_GID" --store "$s" </dev/null >/dev/null || ok=0
  ((ok)) && echo "delete-store with quotas on: no qgroup, no record left"
  check "delete-store with quotas on (issue 11)" "$ok"
}
