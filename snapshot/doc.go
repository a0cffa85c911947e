// Package snapshot keeps the last good catalog read on disk, so that a
// restarting meshd can apply it before Consul answers: the data plane never
// waits for the catalog.
//
// The file is JSON, written atomically (temporary file, fsync, rename) after
// every catalog read whose content changed. A file that does not decode is
// an error for the caller to report and ignore; it is never fatal.
package snapshot
