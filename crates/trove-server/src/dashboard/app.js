/* built by dashboard/build.mjs */
