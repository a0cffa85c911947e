package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"meshd.dev/meshd/agent"
	"meshd.dev/meshd/gateway"
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("meshd_"+name, help, labels, nil)
}

var (
	peersDesc         = desc("peers", "Peers by state: applied, pending, rejected, removal-held.", "state")
	handshakeAgeDesc  = desc("peer_handshake_age_seconds", "Seconds since the latest handshake with the peer (absent: never).", "node")
	rxDesc            = desc("peer_receive_bytes_total", "Bytes received from the peer, as the device counts them.", "node")
	txDesc            = desc("peer_transmit_bytes_total", "Bytes sent to the peer, as the device counts them.", "node")
	reconcilesDesc    = desc("reconciles_total", "Reconciles run since start.")
	reconcileErrDesc  = desc("reconcile_errors_total", "Reconciles that failed since start.")
	reconcileDurDesc  = desc("reconcile_duration_seconds", "Time spent in reconciles.")
	kernelWritesDesc  = desc("kernel_writes_total", "Changes meshd made to links, addresses, peers and routes since start.")
	registrationsDesc = desc("catalog_registrations_total", "Writes of this node's entry to the catalog since start.")
	catalogIndexDesc  = desc("catalog_index", "Raft index of the last catalog read.")
	catalogAgeDesc    = desc("catalog_last_read_age_seconds", "Seconds since the last successful catalog read (absent: none yet).")
	catalogUpDesc     = desc("catalog_reachable", "1 if the last catalog read succeeded.")
	hintsDesc         = desc("catalog_hints_total", "Hints naming another node's entry, since start.")
	hintReadsDesc     = desc("catalog_hint_reads_total", "Instances read because a hint named them (and the list did not have the change yet), since start.")
	hintsCarriedDesc  = desc("catalog_hints_carried_total", "Hints whose entry came in the hint itself (no instance read), since start.")
	hintsAppliedDesc  = desc("catalog_hints_applied_total", "Hint reads and carried entries newer than the watch's list, put into the desired state, since start.")
	hintGapsDesc      = desc("catalog_hint_gaps_total", "Times hints were missed that the hint ring could not give back, each answered by a read of the whole list, since start.")
	rejectedDesc      = desc("rejected_entries", "Catalog entries rejected, by reason code.", "reason")
	breakerDesc       = desc("breaker_tripped", "1 while the mass-removal circuit breaker is tripped.")
	breakerHeldDesc   = desc("breaker_held_removals", "Removals held by the circuit breaker.")
	snapshotAgeDesc   = desc("snapshot_age_seconds", "Seconds since the catalog snapshot was saved (absent: none).")
	snapshotInUseDesc = desc("snapshot_in_use", "1 while the desired state comes from the saved snapshot.")
	convergedDesc     = desc("converged", "1 if the device holds what the catalog asks for.")
	linkDesc          = desc("link_present", "1 if the WireGuard device can be read.")
	gwPeersDesc       = desc("gateway_peers", "User peers a gateway holds (gateway nodes only).")
	gwRejectedDesc    = desc("gateway_rejected_records", "Gateway peer records rejected (gateway nodes only).")
	gwSyncedDesc      = desc("gateway_synced", "1 once the gateway has read its peer records (gateway nodes only).")
	gwWatchingDesc    = desc("gateway_jit_watching", "1 while a just-in-time gateway sees handshake initiations on its user port (0: users not in the kernel cannot connect).")
	gwRecordsDesc     = desc("gateway_records", "Valid, unexpired user peer records a just-in-time gateway knows (the kernel holds only the active ones).")
	gwInstallsDesc    = desc("gateway_jit_installs_total", "User peers a just-in-time gateway put into the kernel for a handshake initiation, since start.")
	gwEvictionsDesc   = desc("gateway_jit_evictions_total", "Idle user peers a just-in-time gateway took out of the kernel (records kept), since start.")
	gwRefusedDesc     = desc("gateway_initiations_refused_total", "Handshake initiations a just-in-time gateway installed nothing for, by reason, since start.", "reason")
	credExpiryDesc    = desc("credential_expiry_timestamp_seconds", "When this host's credential expires (Unix time).")
	revokedDesc       = desc("revoked", "Nodes and identities the authority revoked.")
	impersonatedDesc  = desc("impersonation_seen_total", "Reconciles that saw an entry for this node that it did not publish.")
	parsedDesc        = desc("entries_parsed_total", "Catalog entries parsed and verified since start (an unchanged entry is verified once).")
	withdrawalsDesc   = desc("withdrawals_total", "Leaving hosts' signed withdrawals the delta path brought, by result: verified (the entry dropped) or refused (not its host's; nothing changed).", "result")
)

// Collector reports an agent's status at every scrape.
type Collector struct {
	Status func() agent.Status
	Now    func() time.Time
}

// Describe implements prometheus.Collector.
func (c Collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Collect implements prometheus.Collector.
func (c Collector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	if c.Now != nil {
		now = c.Now()
	}
	st := c.Status()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	states := map[string]float64{agent.PeerApplied: 0, agent.PeerPending: 0, agent.PeerRejected: 0, agent.PeerHeld: 0}
	reasons := map[string]float64{}
	for _, p := range st.Peers {
		states[p.State]++
		if p.State == agent.PeerRejected {
			reasons[p.Code]++
			continue
		}
		if p.Node == "" {
			continue // a held peer the catalog no longer names
		}
		if p.LatestHandshake != nil {
			gauge(handshakeAgeDesc, now.Sub(*p.LatestHandshake).Seconds(), p.Node)
		}
		counter(rxDesc, float64(p.RxBytes), p.Node)
		counter(txDesc, float64(p.TxBytes), p.Node)
	}
	for s, n := range states {
		gauge(peersDesc, n, s)
	}
	for r, n := range reasons {
		gauge(rejectedDesc, n, r)
	}
	counter(reconcilesDesc, float64(st.Reconciles))
	counter(reconcileErrDesc, float64(st.ReconcileErrors))
	ch <- prometheus.MustNewConstSummary(reconcileDurDesc, st.Reconciles, st.ReconcileSeconds, nil)
	counter(kernelWritesDesc, float64(st.KernelWrites))
	counter(registrationsDesc, float64(st.Registrations))
	gauge(catalogIndexDesc, float64(st.Catalog.LastIndex))
	if !st.Catalog.LastGoodRead.IsZero() {
		gauge(catalogAgeDesc, now.Sub(st.Catalog.LastGoodRead).Seconds())
	}
	gauge(catalogUpDesc, b2f(st.Catalog.Reachable))
	counter(hintsDesc, float64(st.Catalog.Hints))
	counter(hintReadsDesc, float64(st.Catalog.HintReads))
	counter(hintsCarriedDesc, float64(st.Catalog.HintsCarried))
	counter(hintsAppliedDesc, float64(st.Catalog.HintsApplied))
	counter(hintGapsDesc, float64(st.Catalog.HintGaps))
	gauge(breakerDesc, b2f(st.Breaker.Tripped))
	gauge(breakerHeldDesc, float64(st.Breaker.Held))
	if !st.Catalog.SnapshotSaved.IsZero() {
		gauge(snapshotAgeDesc, now.Sub(st.Catalog.SnapshotSaved).Seconds())
	}
	gauge(snapshotInUseDesc, b2f(st.Catalog.SnapshotInUse))
	gauge(convergedDesc, b2f(st.Converged))
	gauge(linkDesc, b2f(st.LinkPresent))
	if !st.CredentialExpires.IsZero() {
		gauge(credExpiryDesc, float64(st.CredentialExpires.Unix()))
	}
	gauge(revokedDesc, float64(st.Revoked))
	var seen uint64
	if st.Impersonation != nil {
		seen = st.Impersonation.Rewritten
	}
	counter(impersonatedDesc, float64(seen))
	counter(parsedDesc, float64(st.EntriesParsed))
	counter(withdrawalsDesc, float64(st.Withdrawals.Verified), "verified")
	counter(withdrawalsDesc, float64(st.Withdrawals.Refused), "refused")
	if g := st.Gateway; g != nil {
		gauge(gwPeersDesc, float64(g.Peers))
		gauge(gwRejectedDesc, float64(g.RejectedCount))
		gauge(gwSyncedDesc, b2f(g.Synced))
		if j := g.JIT; j != nil {
			gauge(gwWatchingDesc, b2f(j.Watching))
			gauge(gwRecordsDesc, float64(j.Records))
			counter(gwInstallsDesc, float64(j.Installs))
			counter(gwEvictionsDesc, float64(j.Evictions))
			for _, r := range []string{gateway.RefusedRateLimited, gateway.RefusedMAC1, gateway.RefusedDecrypt, gateway.RefusedUnknownKey, gateway.RefusedReplay} {
				counter(gwRefusedDesc, float64(j.Refused[r]), r)
			}
		}
	}
}
