package firewall

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TableName is meshd's nftables table (family ip6).
const TableName = "meshd"

// Table is meshd's nftables table. Its methods are not safe for concurrent
// use.
type Table struct {
	conn  *nftables.Conn
	table *nftables.Table
	// applied is what the last successful Apply wrote; nil when unknown
	// (at start, or after a failure), which makes the next Apply rebuild
	// the whole table.
	applied *Ruleset
	sets    []*nftables.Set // the sources set of each applied rule
	reach   []*nftables.Set // its reach set, or nil
	writes  atomic.Uint64
	// rules is how many rules the last rebuild wrote, for Intact; -1 when
	// unknown.
	rules atomic.Int64
}

// Open prepares to manage the table in the current network namespace. It
// changes nothing.
func Open() (*Table, error) {
	conn, err := nftables.New(nftables.WithSockOptions(bigSendBuffer))
	if err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	t := &Table{conn: conn, table: &nftables.Table{Family: nftables.TableFamilyIPv6, Name: TableName}}
	t.rules.Store(-1)
	return t, nil
}

// Intact reports whether the table is as the last Apply left it: there,
// with as many rules in its chains (someone's `nft flush ruleset` or
// `nft flush table` leaves users unfiltered). With nothing applied yet it
// reports true. It reads through a netlink connection of its own, so it
// may run beside Apply, from another goroutine.
func (t *Table) Intact() (bool, error) {
	want := t.rules.Load()
	if want < 0 {
		return true, nil
	}
	conn, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("open nftables: %w", err)
	}
	defer conn.CloseLasting()
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv6)
	if err != nil {
		return false, fmt.Errorf("list nftables chains: %w", err)
	}
	var n int64
	for _, c := range chains {
		if c.Table.Name != TableName {
			continue
		}
		rules, err := conn.GetRules(t.table, c)
		if err != nil {
			return false, fmt.Errorf("list rules of %s: %w", c.Name, err)
		}
		n += int64(len(rules))
	}
	return n == want && t.rules.Load() == want, nil
}

// Forget makes the next Apply rebuild the whole table (after Intact said
// it was changed behind meshd's back).
func (t *Table) Forget() { t.fail(nil) }

// Writes counts the nftables transactions committed.
func (t *Table) Writes() uint64 { return t.writes.Load() }

// Apply makes the table enforce rs. When only the sources of rules changed
// since the last Apply, and the table is still there, just those set
// elements are written; otherwise the whole table is replaced in one
// atomic transaction, so that no packet ever sees a half-built policy.
// Applying what is already applied writes nothing.
func (t *Table) Apply(rs Ruleset) error {
	exists, err := t.exists()
	if err != nil {
		return err
	}
	if exists && t.applied != nil && sameShape(*t.applied, rs) {
		return t.update(rs)
	}
	return t.rebuild(rs)
}

func (t *Table) exists() (bool, error) {
	_, err := t.conn.ListTableOfFamily(TableName, nftables.TableFamilyIPv6)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read nftables table %s: %w", TableName, err)
	}
	return true, nil
}

func (t *Table) update(rs Ruleset) error {
	changed := false
	for i, r := range rs.Rules {
		c, err := t.updateSet(t.sets[i], t.applied.Rules[i].Sources, r.Sources)
		if err != nil {
			return t.fail(err)
		}
		changed = changed || c
		if t.reach[i] == nil {
			continue
		}
		c, err = t.updateSet(t.reach[i], t.applied.Rules[i].Reach, r.Reach)
		if err != nil {
			return t.fail(err)
		}
		changed = changed || c
	}
	if !changed {
		return nil
	}
	if err := t.conn.Flush(); err != nil {
		return t.fail(fmt.Errorf("update nftables table %s: %w", TableName, err))
	}
	t.writes.Add(1)
	t.applied = clone(rs)
	return nil
}

// updateSet queues the element changes that take set s from have to want,
// and reports whether there were any.
func (t *Table) updateSet(s *nftables.Set, have, want []netip.Addr) (bool, error) {
	add, del := diffSources(have, want)
	if err := t.addElements(s, add); err != nil {
		return false, err
	}
	for c := range slices.Chunk(del, chunk) {
		if err := t.conn.SetDeleteElements(s, elements(c)); err != nil {
			return false, fmt.Errorf("delete %d addresses from %s: %w", len(c), s.Name, err)
		}
	}
	return len(add)+len(del) > 0, nil
}

// rebuild replaces the table in one transaction: add (so that the delete
// cannot fail on a missing table), delete, add anew.
func (t *Table) rebuild(rs Ruleset) error {
	c := t.conn
	c.AddTable(t.table)
	c.DelTable(t.table)
	c.AddTable(t.table)
	users := c.AddChain(&nftables.Chain{Name: "users", Table: t.table})
	var rules int64
	policy := nftables.ChainPolicyAccept
	for _, hook := range []struct {
		name string
		hook *nftables.ChainHook
	}{{"input", nftables.ChainHookInput}, {"forward", nftables.ChainHookForward}} {
		base := c.AddChain(&nftables.Chain{
			Name: hook.name, Table: t.table, Type: nftables.ChainTypeFilter,
			Hooknum: hook.hook, Priority: nftables.ChainPriorityFilter, Policy: &policy,
		})
		// iifname "<interface>" jump users
		rules++
		c.AddRule(&nftables.Rule{Table: t.table, Chain: base, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(rs.Interface)},
			&expr.Verdict{Kind: expr.VerdictJump, Chain: users.Name},
		}})
		if hook.hook == nftables.ChainHookForward && rs.MeshInterface != "" {
			// oifname "<mesh>" iifname != "<interface>" iifname != "<mesh>" counter drop
			rules++
			c.AddRule(&nftables.Rule{Table: t.table, Chain: base, Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(rs.MeshInterface)},
				&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(rs.Interface)},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(rs.MeshInterface)},
				&expr.Counter{},
				&expr.Verdict{Kind: expr.VerdictDrop},
			}})
		}
		if hook.hook == nftables.ChainHookForward {
			// oifname "<interface>" ip6 saddr <other gateway>
			// ct state ! established,related counter drop: another
			// gateway's host or users open nothing to this one's users;
			// what a user opened is answered.
			notOpened := []expr.Any{
				&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
					Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
					Xor:  binaryutil.NativeEndian.PutUint32(0)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
			}
			for _, p := range rs.Reserved {
				rules++
				c.AddRule(&nftables.Rule{Table: t.table, Chain: base, Exprs: slices.Concat([]expr.Any{
					&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(rs.Interface)},
				}, fromPrefix(p), notOpened, drop())})
			}
		}
	}
	sets := make([]*nftables.Set, len(rs.Rules))
	reach := make([]*nftables.Set, len(rs.Rules))
	for i, r := range rs.Rules {
		var err error
		if sets[i], err = t.addSet(fmt.Sprintf("sources%d", i), r.Sources); err != nil {
			return t.fail(err)
		}
		if r.usesReach(rs.Pool) {
			if reach[i], err = t.addSet(fmt.Sprintf("reach%d", i), r.Reach); err != nil {
				return t.fail(err)
			}
		}
	}
	add := func(exprs ...expr.Any) {
		rules++
		c.AddRule(&nftables.Rule{Table: t.table, Chain: users, Exprs: exprs})
	}
	// 1. ip6 saddr @sources<i> ip6 daddr <named> ip6 daddr @reach<i> accept
	for i, r := range rs.Rules {
		if reach[i] == nil {
			continue
		}
		for _, d := range r.Named {
			if d.Overlaps(rs.Pool) {
				add(slices.Concat(fromSet(sets[i]), toPrefix(d), toSet(reach[i]), accept())...)
			}
		}
	}
	// 2. ip6 daddr <pool> drop
	if rs.Pool.IsValid() {
		add(slices.Concat(toPrefix(rs.Pool), drop())...)
	}
	// 3. ip6 saddr @sources<i> ip6 daddr <named> accept
	for i, r := range rs.Rules {
		for _, d := range r.Named {
			add(slices.Concat(fromSet(sets[i]), toPrefix(d), accept())...)
		}
	}
	// 4. ip6 daddr <own or reserved> drop
	for _, p := range slices.Concat([]netip.Prefix{rs.Own}, rs.Reserved) {
		if p.IsValid() {
			add(slices.Concat(toPrefix(p), drop())...)
		}
	}
	// 5. ip6 saddr @sources<i> ip6 daddr <destination> accept
	for i, r := range rs.Rules {
		for _, d := range r.Destinations {
			add(slices.Concat(fromSet(sets[i]), toPrefix(d), accept())...)
		}
	}
	// 6. Everything else from the user link: counter drop.
	add(&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
	if err := c.Flush(); err != nil {
		return t.fail(fmt.Errorf("write nftables table %s: %w", TableName, err))
	}
	t.writes.Add(1)
	t.applied, t.sets, t.reach = clone(rs), sets, reach
	t.rules.Store(rules)
	return nil
}

// addSet queues a set of addresses named name.
func (t *Table) addSet(name string, addrs []netip.Addr) (*nftables.Set, error) {
	s := &nftables.Set{Table: t.table, Name: name, KeyType: nftables.TypeIP6Addr}
	if err := t.conn.AddSet(s, nil); err != nil {
		return nil, fmt.Errorf("add set %s: %w", name, err)
	}
	return s, t.addElements(s, addrs)
}

// fromSet matches a source address in s: ip6 saddr @s.
func fromSet(s *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 16},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
	}
}

// toSet matches a destination address in s: ip6 daddr @s.
func toSet(s *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
	}
}

// toPrefix matches a destination in p: ip6 daddr & mask == p.
func toPrefix(p netip.Prefix) []expr.Any {
	return matchPrefix(24, p)
}

// fromPrefix matches a source in p: ip6 saddr & mask == p.
func fromPrefix(p netip.Prefix) []expr.Any {
	return matchPrefix(8, p)
}

// matchPrefix matches the IPv6 address at offset (8 source, 24
// destination) of the network header against p.
func matchPrefix(offset uint32, p netip.Prefix) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 16},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 16, Mask: net.CIDRMask(p.Bits(), 128), Xor: make([]byte, 16)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }

func drop() []expr.Any { return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}} }

// chunk is how many set elements go in one netlink message: the element
// list is one attribute, whose length field has 16 bits.
const chunk = 1024

// addElements queues adding addrs to s, a message per chunk; they are
// still written in one transaction.
func (t *Table) addElements(s *nftables.Set, addrs []netip.Addr) error {
	for c := range slices.Chunk(addrs, chunk) {
		if err := t.conn.SetAddElements(s, elements(c)); err != nil {
			return fmt.Errorf("add %d sources to %s: %w", len(c), s.Name, err)
		}
	}
	return nil
}

// sendBuffer is the netlink socket's send buffer: a transaction is one
// message batch, and a rebuild with many peers' addresses outgrows the
// default (about 200 KiB; 16 MiB holds some 400,000 addresses).
const sendBuffer = 16 << 20

// bigSendBuffer raises the send buffer past the system's limit, which
// CAP_NET_ADMIN allows (SO_SNDBUFFORCE), or to that limit without it.
func bigSendBuffer(c *netlink.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var sockErr error
	if err := raw.Control(func(fd uintptr) {
		sockErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sendBuffer)
	}); err != nil {
		return err
	}
	if sockErr != nil {
		return c.SetWriteBuffer(sendBuffer)
	}
	return nil
}

// Remove deletes the table; a missing table is not an error.
func (t *Table) Remove() error {
	t.fail(nil)
	exists, err := t.exists()
	if err != nil || !exists {
		return err
	}
	t.conn.DelTable(t.table)
	if err := t.conn.Flush(); err != nil {
		return fmt.Errorf("delete nftables table %s: %w", TableName, err)
	}
	t.writes.Add(1)
	return nil
}

// fail forgets what was applied, so that the next Apply rebuilds.
func (t *Table) fail(err error) error {
	t.applied, t.sets, t.reach = nil, nil, nil
	t.rules.Store(-1)
	return err
}

func clone(rs Ruleset) *Ruleset {
	c := rs
	c.Reserved = slices.Clone(rs.Reserved)
	c.Rules = make([]Rule, len(rs.Rules))
	for i, r := range rs.Rules {
		c.Rules[i] = Rule{Sources: slices.Clone(r.Sources), Named: slices.Clone(r.Named), Reach: slices.Clone(r.Reach),
			Group: r.Group, Destinations: slices.Clone(r.Destinations)}
	}
	return &c
}

func elements(addrs []netip.Addr) []nftables.SetElement {
	out := make([]nftables.SetElement, len(addrs))
	for i, a := range addrs {
		out[i] = nftables.SetElement{Key: a.AsSlice()}
	}
	return out
}

// ifname is an interface name as the kernel compares it: NUL-padded to
// IFNAMSIZ.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}
