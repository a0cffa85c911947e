// Package licenses finds the licence of every Go module linked into a
// binary, checks each against the licences meshd may ship (Apache-2.0, MIT,
// BSD-2-Clause, BSD-3-Clause, ISC, MPL-2.0), and writes the Debian
// machine-readable copyright file that the package installs.
//
// A licence is read from the module's own licence files (LICENSE, LICENCE,
// COPYING, with any extension) at the version the binary was built with,
// and recognised by github.com/google/licensecheck. A module with no
// licence file, with text that is not mostly a known licence, or with any
// licence outside the allow list is an error naming the module: the check
// never guesses.
package licenses
