package peers

import (
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Changed compares two desired sets (sorted by node name, as Desire returns
// them) by what the kernel holds of each peer: gone are the peers of prev
// that next lacks or holds otherwise (key, endpoint, prefix, keepalive),
// came the peers of next that prev lacks or held otherwise. ok is false
// when either set is not strictly sorted by node name.
func Changed(prev, next []Peer) (gone, came []Peer, ok bool) {
	if sameSlice(prev, next) {
		return nil, nil, true
	}
	if !strictlyByNode(prev) || !strictlyByNode(next) {
		return nil, nil, false
	}
	i, j := 0, 0
	for i < len(prev) || j < len(next) {
		switch {
		case j == len(next) || i < len(prev) && prev[i].Node < next[j].Node:
			gone = append(gone, prev[i])
			i++
		case i == len(prev) || next[j].Node < prev[i].Node:
			came = append(came, next[j])
			j++
		default:
			if !sameKernelPeer(prev[i], next[j]) {
				gone, came = append(gone, prev[i]), append(came, next[j])
			}
			i++
			j++
		}
	}
	return gone, came, true
}

func strictlyByNode(ps []Peer) bool {
	for i := 1; i < len(ps); i++ {
		if ps[i-1].Node >= ps[i].Node {
			return false
		}
	}
	return true
}

func sameKernelPeer(a, b Peer) bool {
	return a.PublicKey == b.PublicKey && a.Endpoint == b.Endpoint && a.Prefix == b.Prefix && a.Keepalive == b.Keepalive
}

// Step is Track followed by Diff, in time proportional to the change
// instead of the fleet, for a kernel that holds exactly what the last plan
// left. Its inputs are that reconcile's: obs is Applied of its plan (or the
// kernel as read, when that plan was empty), absentSince is the map Track returned
// then, and desired differs from that reconcile's desired set by gone and
// came (see Changed). It returns what Track(absentSince, desired, obs, now)
// and Diff(desired, obs, rm) with that map would; rm.AbsentSince is not
// used.
//
// Why only the change needs looking at: after a plan is applied, every
// desired peer is in the kernel as desired; every other kernel peer is in
// absentSince; the tagged routes are the desired prefixes and some of the
// held peers' allowed IPs. So the peers a new plan can touch are those of
// gone and came and those in absentSince, and the routes those prefixes and
// allowed IPs.
func Step(absentSince map[wgtypes.Key]time.Time, desired, gone, came []Peer, obs Observed, rm Removal) (map[wgtypes.Key]time.Time, Plan) {
	findPeer := func(k wgtypes.Key) (KernelPeer, bool) {
		i, ok := slices.BinarySearchFunc(obs.Peers, k, func(kp KernelPeer, k wgtypes.Key) int { return compareKeys(kp.PublicKey, k) })
		if !ok {
			return KernelPeer{}, false
		}
		return obs.Peers[i], true
	}
	cameKeys := make(map[wgtypes.Key]bool, len(came))
	cameOwns := make(map[netip.Prefix]bool, len(came))
	for _, p := range came {
		cameKeys[p.PublicKey] = true
		cameOwns[p.Prefix] = true
	}

	// The kernel peers no desired peer asks for: those that were absent
	// and those gone, unless a peer that came has their key. (A kernel peer
	// in neither was desired before and is still: its node is unchanged.)
	var absentNow []KernelPeer
	seen := make(map[wgtypes.Key]bool, len(absentSince)+len(gone))
	consider := func(k wgtypes.Key) {
		if seen[k] || cameKeys[k] {
			return
		}
		seen[k] = true
		if kp, ok := findPeer(k); ok {
			absentNow = append(absentNow, kp)
		}
	}
	for k := range absentSince {
		consider(k)
	}
	for _, p := range gone {
		consider(p.PublicKey)
	}
	slices.SortFunc(absentNow, func(a, b KernelPeer) int { return compareKeys(a.PublicKey, b.PublicKey) })

	next := absentTimes(absentSince, absentNow, rm.Now)
	rm.AbsentSince = next

	var plan Plan
	for _, p := range came {
		if kp, ok := findPeer(p.PublicKey); !ok || !sameConfig(p, kp) {
			plan.Upsert = append(plan.Upsert, p)
		}
	}
	// A desired prefix is either one that came or one whose node did not
	// change, and no absent peer's allowed IPs were such a prefix (it would
	// have been replaced): so for absent peers and gone prefixes, "owned by
	// a desired peer" is "owned by a peer that came".
	var absent []KernelPeer
	for _, kp := range absentNow {
		if replaced(kp, cameOwns) {
			plan.Remove = append(plan.Remove, kp.PublicKey)
			continue
		}
		absent = append(absent, kp)
	}
	kept := decideAbsent(&plan, absent, len(desired), len(obs.Peers), rm)
	var wasAbsent []KernelPeer
	for k := range absentSince {
		if kp, ok := findPeer(k); ok {
			wasAbsent = append(wasAbsent, kp)
		}
	}
	stepRoutes(&plan, obs, gone, came, append(wasAbsent, absentNow...), cameOwns, kept)
	slices.SortFunc(plan.Remove, compareKeys)
	slices.SortFunc(plan.Held, func(a, b Held) int { return compareKeys(a.PublicKey, b.PublicKey) })
	slices.SortFunc(plan.AddRoutes, netip.Prefix.Compare)
	return next, plan
}

// stepRoutes is Step's part for routes. The routes a plan may delete are
// the gone peers' prefixes and the allowed IPs of the peers absent before
// or now; each goes unless a peer that came (cameOwns) or a held peer
// (kept) keeps it. The prefixes of peers that came are added where
// missing.
func stepRoutes(plan *Plan, obs Observed, gone, came []Peer, absent []KernelPeer, cameOwns, kept map[netip.Prefix]bool) {
	hasRoute := func(p netip.Prefix) bool {
		_, ok := slices.BinarySearchFunc(obs.Routes, p, netip.Prefix.Compare)
		return ok
	}
	var maybeDel []netip.Prefix
	for _, p := range gone {
		maybeDel = append(maybeDel, p.Prefix)
	}
	for _, kp := range absent {
		for _, a := range kp.AllowedIPs {
			maybeDel = append(maybeDel, a.Masked())
		}
	}
	slices.SortFunc(maybeDel, netip.Prefix.Compare)
	maybeDel = slices.Compact(maybeDel)
	for _, r := range maybeDel {
		if hasRoute(r) && !cameOwns[r] && !kept[r] {
			plan.DelRoutes = append(plan.DelRoutes, r)
		}
	}
	for _, p := range came {
		if !hasRoute(p.Prefix) {
			plan.AddRoutes = append(plan.AddRoutes, p.Prefix)
		}
	}
}

// replaced reports whether a kernel peer no desired peer asks for may go
// without a grace: a peer without allowed IPs carries no traffic, and one
// whose allowed IPs a desired peer now owns was replaced.
func replaced(kp KernelPeer, owned map[netip.Prefix]bool) bool {
	if len(kp.AllowedIPs) == 0 {
		return true
	}
	for _, a := range kp.AllowedIPs {
		if owned[a.Masked()] {
			return true
		}
	}
	return false
}

// decideAbsent is the part of Diff that decides, for the kernel peers no
// desired peer asks for and none replaced, which go now and which are held
// (grace, circuit breaker). It returns the allowed IPs of the held ones:
// their routes stay.
func decideAbsent(plan *Plan, absent []KernelPeer, desired, kernel int, rm Removal) map[netip.Prefix]bool {
	kept := map[netip.Prefix]bool{}
	plan.Pending = len(absent)
	counted, base := len(absent)+rm.Recent, max(kernel, rm.Peak)
	plan.Breaker = rm.MaxFraction > 0 && len(absent) > 0 &&
		(desired == 0 || counted > rm.Floor && float64(counted) > rm.MaxFraction*float64(base))
	for _, kp := range absent {
		since, ok := rm.AbsentSince[kp.PublicKey]
		if !ok {
			since = rm.Now
		}
		until := since.Add(rm.Grace)
		due := !rm.Now.Before(until)
		if due && (!plan.Breaker || rm.Released[kp.PublicKey]) {
			plan.Remove = append(plan.Remove, kp.PublicKey)
			if !rm.Released[kp.PublicKey] {
				plan.Expired++ // an operator's release is not counted against the next removals
			}
			continue
		}
		plan.Held = append(plan.Held, Held{PublicKey: kp.PublicKey, Until: until, Breaker: due})
		for _, a := range kp.AllowedIPs {
			kept[a.Masked()] = true
		}
	}
	return kept
}
