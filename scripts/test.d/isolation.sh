# Sourced by scripts/test (root) around the gate suite (issue #13): the victim's services,
# and the root-side isolation checks that need users the suites do not run as (nobody,
# the owner next to the intruder). Needs GATE, VICTIM_ID, VICTIM_PID, TEST_USER,
# INTRUDER, as_test_user and check from the caller.

conf_value() { sed -n "s/^$2=//p" "/etc/trellis/net/$1.conf"; }

# A server in the victim's netns on :8080 (never published), and services of the victim
# user on the host inside the intruder's port block: TCP on the victim's gateway and on
# 127.0.0.1, UDP on the victim's gateway (ordinary unprivileged binds). The gate suite
# attacks them and expects them untouched.
start_victim_services() {
  local tuid iuid gw end
  tuid=$(id -u "$TEST_USER")
  iuid=$(id -u "$INTRUDER")
  gw=$(conf_value "$tuid" gateway)
  end=$(conf_value "$iuid" port_end)
  runuser -u "$TEST_USER" -- nsenter --preserve-credentials -t "$VICTIM_PID" -U -n node -e \
    "require('net').createServer((c) => c.end('victim\n')).listen({ port: 8080, host: '::', ipv6Only: false })" </dev/null >/dev/null 2>&1 &
  VICTIM_NS_SERVER=$!
  runuser -u "$TEST_USER" -- node -e "
    const net = require('net'), dgram = require('dgram');
    net.createServer((c) => c.end('victim\n')).listen($end, '$gw');
    net.createServer((c) => c.end('victim\n')).listen($((end - 1)), '127.0.0.1');
    const u = dgram.createSocket('udp4');
    u.on('message', (m, r) => u.send('victim\n', r.port, r.address));
    u.bind($((end - 2)), '$gw');" </dev/null >/dev/null 2>&1 &
  VICTIM_HOST_SERVICES=$!
  for _ in $(seq 100); do
    [[ $(nsenter -t "$VICTIM_PID" -n ss -ltnH 'sport = :8080' | wc -l) -ge 1 && $(ss -ltnH "sport = :$end" | wc -l) -ge 1 ]] && break
    sleep 0.1
  done
}

stop_victim_services() {
  if [[ -n ${VICTIM_NS_SERVER:-} ]]; then kill "$VICTIM_NS_SERVER" 2>/dev/null || true; fi
  if [[ -n ${VICTIM_HOST_SERVICES:-} ]]; then kill "$VICTIM_HOST_SERVICES" 2>/dev/null || true; fi
  VICTIM_NS_SERVER=
  VICTIM_HOST_SERVICES=
}

# fetch_as USER HOST PORT: what a TCP connect from USER's host shell reads (empty when refused or timed out).
fetch_as() {
  runuser -u "$1" -- timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" && head -c 64 <&3' "$2" "$3" 2>/dev/null || true
}

# fetch_until USER HOST PORT WANT: fetch_as, tried for up to ~20 s until it reads WANT (a
# fresh veth's neighbour entry, or a loaded machine, can take longer than one try).
fetch_until() {
  local out i
  for i in 1 2 3 4 5; do
    out=$(fetch_as "$1" "$2" "$3")
    [[ $out == "$4" ]] && break
    sleep 1
  done
  printf '%s' "$out"
}

# Issue #13, from root's side: an unpublished container port is closed to other users
# (nobody here; the intruder in the gate suite) and open to the owner and through net-in;
# a net-in on a port another user holds is refused and that user's service keeps working.
isolation_checks() {
  local tuid ip gw p out ok lpid
  tuid=$(id -u "$TEST_USER")
  ip=$(nsenter -t "$VICTIM_PID" -n ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
  gw=$(conf_value "$tuid" gateway)
  p=$(conf_value "$tuid" port_end)
  echo "== isolation checks (root): the victim's $ip:8080"
  # The owner first: it proves the path works, so the refusal below means the rules.
  out=$(fetch_until "$TEST_USER" "$ip" 8080 victim)
  [[ $out == victim ]] && ok=1 || ok=0
  echo "the owner -> $ip:8080: ${out:-no answer}"
  check "issue #13: the owner reaches its unpublished container port" "$ok"
  out=$(fetch_as nobody "$ip" 8080)
  [[ -z $out ]] && ok=1 || ok=0
  echo "nobody -> $ip:8080 (unpublished): ${out:-no answer}"
  check "issue #13: nobody cannot reach an unpublished container port" "$ok"
  ok=0
  if as_test_user "$GATE" ports "$VICTIM_ID" "$VICTIM_PID" "$p:8080/tcp"; then
    out=$(fetch_until nobody "$gw" "$p" victim)
    echo "nobody -> $gw:$p (net-in to :8080): ${out:-no answer}"
    [[ $out == victim ]] && ok=1
  fi
  as_test_user "$GATE" ports "$VICTIM_ID" "$VICTIM_PID" || ok=0
  check "issue #13: nobody reaches the container through net-in" "$ok"
  # Another user (the intruder) holds a port of the owner's block: the owner's net-in is refused.
  runuser -u "$INTRUDER" -- node -e "require('net').createServer((c) => c.end('intruder\n')).listen($((p - 1)), '$gw')" </dev/null >/dev/null 2>&1 &
  lpid=$!
  for _ in $(seq 100); do [[ $(ss -ltnH "sport = :$((p - 1))" | wc -l) -ge 1 ]] && break; sleep 0.1; done
  ok=1
  out=$(as_test_user "$GATE" ports "$VICTIM_ID" "$VICTIM_PID" "$((p - 1)):8080/tcp" 2>&1) && ok=0
  echo "the owner's net-in on $((p - 1)), which the intruder holds: $out"
  [[ $out == *"is in use on this host by a socket of uid $(id -u "$INTRUDER")"* ]] || ok=0
  out=$(fetch_until nobody "$gw" $((p - 1)) intruder)
  echo "nobody -> $gw:$((p - 1)) after it: ${out:-no answer}"
  [[ $out == intruder ]] || ok=0
  kill "$lpid" 2>/dev/null || true
  check "issue #13: a net-in on a port another user holds is refused and that service keeps working" "$ok"
}

# kill_gate_under PID: SIGKILL to the cni-gate among PID's descendants (ours only).
kill_gate_under() {
  local c
  for c in $(pgrep -P "$1" || true); do
    if [[ $(cat "/proc/$c/comm" 2>/dev/null) == cni-gate ]]; then kill -KILL "$c" 2>/dev/null || true; else kill_gate_under "$c"; fi
  done
}

# Issue #10: del runs portmap only for an id with a ports record. A container whose ports
# call was killed at 5-100 ms (TCP and UDP, so both portmap's rules and the gate's), or
# that finished ("done"), then deleted, leaves no nat rule naming it, and no record, eth0
# or lease.
killed_ports_del_check() {
  local tuid p ms spare pid rc left ok=1
  tuid=$(id -u "$TEST_USER")
  p=$(($(conf_value "$tuid" port_end) - 3))
  for ms in 5 15 25 35 50 70 100 done; do
    spare=$(runuser -u "$TEST_USER" -- bash -c 'unshare --user --map-root-user --net sleep 600 </dev/null >/dev/null 2>&1 & echo $!')
    for _ in $(seq 100); do [[ $(cat "/proc/$spare/comm" 2>/dev/null) == sleep ]] && break; sleep 0.05; done
    as_test_user "$GATE" add portskilled "$spare" >/dev/null || ok=0
    as_test_user "$GATE" ports portskilled "$spare" "$p:8080/tcp" "$p:8080/udp" >/dev/null 2>&1 &
    pid=$!
    if [[ $ms == done ]]; then
      wait "$pid" || ok=0
      [[ $(iptables-save -t nat | grep -cF "u$tuid-portskilled") -ge 2 ]] || { echo "scripts/test: ports portskilled made no nat rules" >&2; ok=0; }
    else
      sleep "$(printf '0.%03d' "$ms")"
      kill_gate_under "$pid"
      wait "$pid" 2>/dev/null || true
    fi
    rc=0
    as_test_user "$GATE" del portskilled "$spare" || rc=$?
    left=$( (iptables-save -t nat | grep -F "u$tuid-portskilled"; nsenter -t "$spare" -n ip -o link show; grep -rlF "u$tuid-portskilled" "/var/lib/trellis/net/$tuid/ipam"; ls "/var/lib/trellis/net/$tuid/results/portskilled.json" "/var/lib/trellis/net/$tuid/ports/portskilled") 2>/dev/null | grep -cv ': lo:' || true)
    if ((rc != 0 || left != 0)); then
      echo "scripts/test: a ports call killed after ${ms} ms, then del (exit $rc), left $left things (nat rules, eth0, lease, records)" >&2
      ok=0
    fi
    kill "$spare" 2>/dev/null || true
  done
  check "issue #10: a container whose ports call was killed is undone by del: no nat rule, record, eth0 or lease" "$ok"
}

# Issue #10, from root (only root can write the gate's state): the gate's own leases and
# links. A lease file of another id (an earlier host-local's, another container's) is
# never taken or released: ip= of its address is refused and nothing is made; an add
# takes another address; its del leaves the planted file. A host veth named by a record
# (an intent, as a killed add leaves) that is not on the user's bridge is left alone by del.
lease_and_veth_checks() {
  local tuid gw ip dir spare rc out ok=1 left
  tuid=$(id -u "$TEST_USER")
  gw=$(conf_value "$tuid" gateway)
  ip="${gw%.*}.$((${gw##*.} + 250))"
  dir=/var/lib/trellis/net/$tuid/ipam/trellis-$tuid
  echo "== gate lease and veth checks (root): a lease of another id on $ip, a foreign veth"
  install -d -m 0755 "$dir"
  printf 'u%s-someone-else\r\neth0' "$tuid" >"$dir/$ip"
  chmod 0644 "$dir/$ip"
  spare=$(runuser -u "$TEST_USER" -- bash -c 'unshare --user --map-root-user --net sleep 600 </dev/null >/dev/null 2>&1 & echo $!')
  for _ in $(seq 100); do [[ $(cat "/proc/$spare/comm" 2>/dev/null) == sleep ]] && break; sleep 0.05; done
  rc=0
  out=$(as_test_user "$GATE" add planted "$spare" "ip=$ip" 2>&1) || rc=$?
  if ((rc != 1)) || [[ $out != *"requested IP address $ip is not available"* ]]; then
    echo "scripts/test: add ip=$ip over another id's lease: exit $rc: $out" >&2
    ok=0
  fi
  left=$( (nsenter -t "$spare" -n ip -o link show; ls "/var/lib/trellis/net/$tuid/results/planted.json") 2>/dev/null | grep -cv ': lo:' || true)
  ((left == 0)) || { echo "scripts/test: the refused add left $left things" >&2; ok=0; }
  out=$(as_test_user "$GATE" add planted "$spare" 2>/dev/null | grep -o '"address": "[^"]*"') || ok=0
  [[ $out != *"\"$ip/"* ]] || { echo "scripts/test: add took the planted lease's address: $out" >&2; ok=0; }
  as_test_user "$GATE" del planted "$spare" || ok=0
  as_test_user "$GATE" del planted || ok=0
  [[ $(cat "$dir/$ip" 2>/dev/null) == "u$tuid-someone-else"$'\r\n'eth0 ]] || { echo "scripts/test: del removed or changed another id's lease" >&2; ok=0; }
  rm -f "$dir/$ip"
  # a veth of the host's that a record names, not on the user's bridge
  ip link add trtestfv0 type veth peer name trtestfv1
  printf '{"intent":"add","netns":"none","veth":"trtestfv0"}' >"/var/lib/trellis/net/$tuid/results/foreignveth.json"
  chmod 0600 "/var/lib/trellis/net/$tuid/results/foreignveth.json"
  as_test_user "$GATE" del foreignveth "$spare" || { echo "scripts/test: del of a record naming a foreign veth failed" >&2; ok=0; }
  ip link show trtestfv0 >/dev/null 2>&1 || { echo "scripts/test: del removed a veth that is not on the user's bridge" >&2; ok=0; }
  [[ ! -e "/var/lib/trellis/net/$tuid/results/foreignveth.json" ]] || ok=0
  ip link del trtestfv0 2>/dev/null || true
  kill "$spare" 2>/dev/null || true
  check "issue #10: another id's lease is never taken or released; a foreign veth a record names is left alone" "$ok"
}

# An add (with the extra arguments given) killed at 5-100 ms, then del: nothing of it may be
# left: no eth0 in its namespace, lease, result, and for a pool add its record and bridge.
killed_add_check() {
  local what=$1 tuid ms spare pid rc left ok=1
  shift
  tuid=$(id -u "$TEST_USER")
  for ms in 5 15 25 35 50 70 100; do
    spare=$(runuser -u "$TEST_USER" -- bash -c 'unshare --user --map-root-user --net sleep 600 </dev/null >/dev/null 2>&1 & echo $!')
    for _ in $(seq 100); do [[ $(cat "/proc/$spare/comm" 2>/dev/null) == sleep ]] && break; sleep 0.05; done
    as_test_user "$GATE" add killed "$spare" "$@" >/dev/null 2>&1 &
    pid=$!
    sleep "$(printf '0.%03d' "$ms")"
    kill_gate_under "$pid"
    wait "$pid" 2>/dev/null || true
    rc=0
    as_test_user "$GATE" del killed "$spare" || rc=$?
    left=$( (nsenter -t "$spare" -n ip -o link show; grep -rlF "u$tuid-killed" "/var/lib/trellis/net/$tuid/ipam"; ls "/var/lib/trellis/net/$tuid/results/killed.json" "/var/lib/trellis/net/$tuid/pool/killed"; ip -o link show | grep -E "^[0-9]+: tr${tuid}p[0-9]+[:@]") 2>/dev/null | grep -cv ': lo:' || true)
    if ((rc != 0 || left != 0)); then
      echo "scripts/test: an add ($*) killed after ${ms} ms, then del (exit $rc), left $left things (eth0, lease, records, pool bridge)" >&2
      ok=0
    fi
    kill "$spare" 2>/dev/null || true
  done
  check "$what" "$ok"
}

# Issue #13, finding 3, from root (the one who can still kill the setuid gate; cgroup.kill
# can too): a gate killed at any moment of ports or add leaves a record that the next
# call, or del, uses to finish the job: no DNAT rule (portmap's TCP, the gate's own UDP),
# eth0, veth or lease is left.
interrupted_gate_checks() {
  local tuid p ms pid ok=1 left spare rc
  tuid=$(id -u "$TEST_USER")
  p=$(conf_value "$tuid" port_end)
  echo "== interrupted gate checks (root)"
  for ms in 5 15 25 35 50 70 100; do
    as_test_user "$GATE" ports "$VICTIM_ID" "$VICTIM_PID" "$p:8080/tcp" "$p:8080/udp" >/dev/null 2>&1 &
    pid=$!
    sleep "$(printf '0.%03d' "$ms")"
    kill_gate_under "$pid"
    wait "$pid" 2>/dev/null || true
    as_test_user "$GATE" ports "$VICTIM_ID" "$VICTIM_PID" || ok=0
    left=$(iptables-save -t nat | grep -cF "u$tuid-$VICTIM_ID" || true)
    if ((left != 0)); then
      echo "scripts/test: a ports call killed after ${ms} ms left $left nat rules after the next call" >&2
      ok=0
    fi
  done
  check "issue #13: a killed ports call is undone by the next one" "$ok"
  killed_ports_del_check
  lease_and_veth_checks
  killed_add_check "issue #13: a killed add is undone by del"
  # issue #8: the same on a subnet of the test user's pool: nor is its pool record or bridge left
  local pool net
  pool=$(sed -n 's/^pool=//p' "/etc/trellis/net/$tuid.pool")
  net="${pool%/*}/$((${pool#*/} > 24 ? ${pool#*/} : 24))"
  killed_add_check "issue #8: a killed add on a pool subnet is undone by del" "net=$net"
  # issue #8 (review): a network that appears on the host after setup granted the pool (a VPN, a
  # container engine) is not taken: a pool subnet that a host route covers is refused, nothing made
  local base taken out
  base=${pool%/*}
  taken="${base%.*}.$((${base##*.} + 64))/26"
  ok=1
  ip link add trtest-taken type veth peer name trtest-taken1
  ip addr add "${base%.*}.$((${base##*.} + 65))/26" dev trtest-taken
  ip link set trtest-taken up
  ip link set trtest-taken1 up
  spare=$(runuser -u "$TEST_USER" -- bash -c 'unshare --user --map-root-user --net sleep 600 </dev/null >/dev/null 2>&1 & echo $!')
  for _ in $(seq 100); do [[ $(cat "/proc/$spare/comm" 2>/dev/null) == sleep ]] && break; sleep 0.05; done
  rc=0
  out=$(as_test_user "$GATE" add taken "$spare" "net=$taken" 2>&1) || rc=$?
  if ((rc != 2)) || [[ $out != *"is not free on this host"* ]]; then
    echo "scripts/test: a pool subnet ($taken) under a host route was not refused: exit $rc: $out" >&2
    ok=0
  fi
  left=$( (nsenter -t "$spare" -n ip -o link show; ls "/var/lib/trellis/net/$tuid/results/taken.json" "/var/lib/trellis/net/$tuid/pool/taken"; ip -o link show | grep -E "^[0-9]+: tr${tuid}p[0-9]+[:@]") 2>/dev/null | grep -cv ': lo:' || true)
  ((left == 0)) || { echo "scripts/test: the refused pool add left $left things" >&2; ok=0; }
  kill "$spare" 2>/dev/null || true
  ip link del trtest-taken
  check "issue #8: a pool subnet that a host route now covers is refused, nothing made" "$ok"
}

# udp_ask USER HOST PORT SPORT: the first answer to one datagram sent from USER's host
# socket bound to SPORT (so a second ask is the same flow), within 2 s; empty otherwise.
udp_ask() {
  runuser -u "$1" -- node -e "
    const s = require('dgram').createSocket('udp4');
    const t = setTimeout(() => s.close(), 2000);
    s.on('message', (m) => { clearTimeout(t); process.stdout.write(String(m)); s.close(); });
    s.bind($4, () => s.send('hello', $3, '$2'));" </dev/null 2>/dev/null || true
}

# udp_echo_in USER PID PORT NAME: a UDP server answering NAME in PID's namespaces, as USER; prints its pid.
udp_echo_in() {
  runuser -u "$1" -- nsenter --preserve-credentials -t "$2" -U -n node -e "
    const u = require('dgram').createSocket('udp4');
    u.on('message', (m, r) => u.send('$4', r.port, r.address));
    u.bind($3);" </dev/null >/dev/null 2>&1 &
  echo $!
}

# Issue #13, the last item, from root (this user can read the conntrack table; the
# intruder cannot): a UDP mapping deletes only the conntrack entries it applies to (UDP,
# original destination a local address of the host, the mapped port). The victim's flow
# from its host shell to its container's address, port P (a remote host, reached through
# a veth), keeps its entry and keeps working after the intruder maps UDP P; root's
# unreplied flow to the intruder's gateway:P, which the mapping does apply to, is deleted,
# so its next datagram reaches the intruder's container. (portmap's UDP ADD deleted both.)
udp_flush_checks() {
  local iuid vip igw p spare srv1 srv2 ok=1 out entry
  iuid=$(id -u "$INTRUDER")
  vip=$(nsenter -t "$VICTIM_PID" -n ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
  igw=$(conf_value "$iuid" gateway)
  p=$(($(conf_value "$iuid" port_start) + 9))
  echo "== UDP mapping conntrack checks (root): the victim's flow to $vip:$p/udp, then the intruder maps $p/udp"
  spare=$(runuser -u "$INTRUDER" -- bash -c 'unshare --user --map-root-user --net sleep 600 </dev/null >/dev/null 2>&1 & echo $!')
  for _ in $(seq 100); do [[ $(cat "/proc/$spare/comm" 2>/dev/null) == sleep ]] && break; sleep 0.05; done
  runuser -u "$INTRUDER" -- "$GATE" add udpflush "$spare" >/dev/null || ok=0
  srv1=$(udp_echo_in "$INTRUDER" "$spare" 7000 intruder)
  srv2=$(udp_echo_in "$TEST_USER" "$VICTIM_PID" "$p" victim)
  for _ in $(seq 100); do
    [[ $(nsenter -t "$spare" -n ss -lunH 'sport = :7000' | wc -l) -ge 1 && $(nsenter -t "$VICTIM_PID" -n ss -lunH "sport = :$p" | wc -l) -ge 1 ]] && break
    sleep 0.1
  done
  out=$(udp_ask "$TEST_USER" "$vip" "$p" 41001)
  echo "the victim -> $vip:$p: ${out:-no answer}"
  [[ $out == victim ]] || ok=0
  out=$(udp_ask root "$igw" "$p" 41002)
  echo "root -> $igw:$p before the mapping: ${out:-no answer}"
  [[ -z $out ]] || ok=0
  entry=$(grep -E " dst=$vip sport=41001 dport=$p " /proc/net/nf_conntrack || true)
  [[ -n $entry ]] || { echo "scripts/test: no conntrack entry for the victim's flow" >&2; ok=0; }
  grep -qE " dst=$igw sport=41002 dport=$p " /proc/net/nf_conntrack || { echo "scripts/test: no conntrack entry for root's flow to $igw:$p" >&2; ok=0; }
  runuser -u "$INTRUDER" -- "$GATE" ports udpflush "$spare" "$p:7000/udp" || ok=0
  # no datagram of the victim's flow went in between: an entry now is the one from before
  if ! grep -qE " dst=$vip sport=41001 dport=$p " /proc/net/nf_conntrack; then
    echo "scripts/test: the intruder's UDP mapping of $p deleted the victim's conntrack entry to $vip:$p" >&2
    ok=0
  fi
  if grep -qE " dst=$igw sport=41002 dport=$p " /proc/net/nf_conntrack; then
    echo "scripts/test: the UDP mapping of $p left root's unreplied entry to $igw:$p (it would bypass the mapping)" >&2
    ok=0
  fi
  out=$(udp_ask "$TEST_USER" "$vip" "$p" 41001)
  echo "the victim -> $vip:$p after the mapping: ${out:-no answer}"
  [[ $out == victim ]] || ok=0
  out=$(udp_ask root "$igw" "$p" 41002)
  echo "root -> $igw:$p after the mapping: ${out:-no answer}"
  [[ $out == intruder ]] || ok=0
  runuser -u "$INTRUDER" -- "$GATE" del udpflush "$spare" || ok=0
  kill "$srv1" "$srv2" "$spare" 2>/dev/null || true
  check "issue #13: a UDP mapping deletes only the conntrack entries it applies to (another user's flow to a remote host on that port keeps its entry and works)" "$ok"
}
