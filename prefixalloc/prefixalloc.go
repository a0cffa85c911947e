package prefixalloc

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/big"
	"net/netip"
	"strings"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/peers"
)

// KVPrefix is where claims live.
const KVPrefix = "meshd/prefixes/"

// ErrExhausted means every prefix of the supernet is claimed.
var ErrExhausted = errors.New("no free prefix left in the mesh supernet")

// ErrClaimedByOther means a prefix asked for belongs to another node.
var ErrClaimedByOther = errors.New("prefix is claimed by another node")

// Key is the KV key of a prefix's claim.
func Key(p netip.Prefix) string {
	return KVPrefix + strings.ReplaceAll(p.String(), "/", "_")
}

// ParseKey is Key's inverse.
func ParseKey(key string) (netip.Prefix, error) {
	s, ok := strings.CutPrefix(key, KVPrefix)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("key %q is not under %s", key, KVPrefix)
	}
	return netip.ParsePrefix(strings.Replace(s, "_", "/", 1))
}

// DefaultBits is the prefix length init claims: /48 in a supernet shorter
// than /40 (65,536 or more hosts), else 8 bits longer than the supernet.
func DefaultBits(supernet netip.Prefix) int {
	if supernet.Bits() < 40 {
		return 48
	}
	return min(supernet.Bits()+8, 120)
}

// Nth returns the i-th prefix of length bits inside supernet.
func Nth(supernet netip.Prefix, bits int, i *big.Int) netip.Prefix {
	base := new(big.Int).SetBytes(supernet.Masked().Addr().AsSlice())
	off := new(big.Int).Lsh(i, uint(128-bits))
	b := new(big.Int).Or(base, off).FillBytes(make([]byte, 16))
	return netip.PrefixFrom(netip.AddrFrom16([16]byte(b)), bits)
}

// Usable is how many prefixes of length bits Candidates can offer in
// supernet: all but the first.
func Usable(supernet netip.Prefix, bits int) *big.Int {
	space := new(big.Int).Lsh(big.NewInt(1), uint(bits-supernet.Bits()))
	return space.Sub(space, big.NewInt(1))
}

// Candidates calls yield with every prefix of length bits in supernet but
// the first (index 0, whose first address is the supernet's own), starting
// at a point derived from node and wrapping around, until yield returns
// false. At most limit candidates are offered.
func Candidates(supernet netip.Prefix, bits int, node string, limit int, yield func(netip.Prefix) bool) {
	usable := Usable(supernet, bits)
	if usable.Sign() <= 0 {
		return
	}
	h := fnv.New64a()
	h.Write([]byte(node))
	start := new(big.Int).Mod(new(big.Int).SetUint64(h.Sum64()), usable)
	for n := 0; n < limit && big.NewInt(int64(n)).Cmp(usable) < 0; n++ {
		i := new(big.Int).Add(start, big.NewInt(int64(n)))
		i.Mod(i, usable)
		i.Add(i, big.NewInt(1))
		if !yield(Nth(supernet, bits, i)) {
			return
		}
	}
}

// Claims lists every claim: prefix -> owning node.
func Claims(ctx context.Context, kv *api.KV) (map[netip.Prefix]string, error) {
	pairs, _, err := kv.List(KVPrefix, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("list prefix claims: %w", err)
	}
	out := make(map[netip.Prefix]string, len(pairs))
	for _, p := range pairs {
		if pfx, err := ParseKey(p.Key); err == nil {
			out[pfx] = string(p.Value)
		}
	}
	return out, nil
}

// Claim returns node's prefix of length bits inside supernet: the one it
// already holds, or a free one it claims now (claimed says which).
func Claim(ctx context.Context, kv *api.KV, node string, supernet netip.Prefix, bits int) (p netip.Prefix, claimed bool, err error) {
	claims, err := Claims(ctx, kv)
	if err != nil {
		return netip.Prefix{}, false, err
	}
	taken := make([]netip.Prefix, 0, len(claims))
	for pfx, owner := range claims {
		if owner == node && supernet.Contains(pfx.Addr()) {
			return pfx, false, nil
		}
		taken = append(taken, pfx)
	}
	overlapsTaken := func(c netip.Prefix) bool {
		for _, t := range taken {
			if t.Overlaps(c) {
				return true
			}
		}
		return false
	}
	var claimErr error
	Candidates(supernet, bits, node, 1<<20, func(c netip.Prefix) bool {
		if overlapsTaken(c) {
			return true
		}
		ok, err := create(ctx, kv, c, node)
		if err != nil {
			claimErr = err
			return false
		}
		if ok {
			p, claimed = c, true
			return false
		}
		return true // lost the race for c: try the next
	})
	if claimErr != nil {
		return netip.Prefix{}, false, claimErr
	}
	if !claimed {
		return netip.Prefix{}, false, ErrExhausted
	}
	return p, true, nil
}

// ClaimExact claims p for node, or confirms node already holds it. It fails
// with ErrClaimedByOther if another node does.
func ClaimExact(ctx context.Context, kv *api.KV, node string, p netip.Prefix) (claimed bool, err error) {
	ok, err := create(ctx, kv, p, node)
	if err != nil || ok {
		return ok, err
	}
	pair, _, err := kv.Get(Key(p), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("read claim of %s: %w", p, err)
	}
	if pair == nil {
		return false, fmt.Errorf("claim of %s vanished while being read; try again", p)
	}
	if owner := string(pair.Value); owner != node {
		return false, fmt.Errorf("%s: %w (%s)", p, ErrClaimedByOther, owner)
	}
	return false, nil
}

// create makes the claim key with check-and-set index 0: it succeeds only
// if the key does not exist.
func create(ctx context.Context, kv *api.KV, p netip.Prefix, node string) (bool, error) {
	ok, _, err := kv.CAS(&api.KVPair{Key: Key(p), Value: []byte(node), ModifyIndex: 0}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("claim %s: %w", p, err)
	}
	return ok, nil
}

// Release frees node's claim on p. A claim held by another node is left
// alone (ErrClaimedByOther); a missing one is not an error.
func Release(ctx context.Context, kv *api.KV, node string, p netip.Prefix) error {
	pair, _, err := kv.Get(Key(p), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("read claim of %s: %w", p, err)
	}
	if pair == nil {
		return nil
	}
	if owner := string(pair.Value); owner != node {
		return fmt.Errorf("release %s: %w (%s)", p, ErrClaimedByOther, owner)
	}
	ok, _, err := kv.DeleteCAS(&api.KVPair{Key: pair.Key, ModifyIndex: pair.ModifyIndex}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("release %s: %w", p, err)
	}
	if !ok {
		return fmt.Errorf("release %s: the claim changed while being released; try again", p)
	}
	return nil
}

// DefaultPool is where a gateway takes its users' addresses from by
// default: the upper half of its node prefix (the lower half holds the
// node's own mesh address).
func DefaultPool(prefix netip.Prefix) netip.Prefix {
	return Nth(prefix.Masked(), prefix.Bits()+1, big.NewInt(1))
}

// ValidatePool checks a gateway's user address pool against the gateway's node
// prefix: inside it, without the node's mesh address (the prefix's first
// host address), with at least one usable address (the pool's first
// address is never handed out).
func ValidatePool(pool, prefix netip.Prefix) error {
	switch {
	case peers.CheckIPv6Prefix(pool) != nil:
		return fmt.Errorf("pool %s is not a masked IPv6 CIDR", pool)
	case pool.Bits() < prefix.Bits() || !prefix.Contains(pool.Addr()):
		return fmt.Errorf("pool %s is not inside the gateway's prefix %s", pool, prefix)
	case pool.Contains(prefix.Addr().Next()):
		return fmt.Errorf("pool %s holds the gateway's mesh address %s", pool, prefix.Addr().Next())
	case pool.Bits() > 127:
		return fmt.Errorf("pool %s has no usable address (want /127 or shorter)", pool)
	}
	return nil
}
