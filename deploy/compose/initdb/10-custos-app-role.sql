-- The role the Custos server connects as: a login without superuser, CREATEDB, CREATEROLE, REPLICATION or
-- BYPASSRLS, so the triggers and grants of `custos audit harden` bind it. The owner (POSTGRES_USER) runs
-- migrations and `audit harden` only (the compose service `migrate`).
--
-- The postgres image runs this file with psql once, when it initialises an empty data directory
-- (/docker-entrypoint-initdb.d). For a database made before this file existed, run it once by hand:
--   psql -U custos -d custos -v app_password_file=secrets/app-db-password -f initdb/10-custos-app-role.sql
\set ON_ERROR_STOP on
\if :{?app_role}
\else
  \set app_role custos_app
\endif
\if :{?app_password_file}
\else
  \set app_password_file /run/secrets/app-db-password
\endif
\set app_password `cat :'app_password_file'`

CREATE ROLE :"app_role" LOGIN PASSWORD :'app_password'
  NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
\unset app_password
GRANT CONNECT ON DATABASE :"DBNAME" TO :"app_role";
GRANT USAGE ON SCHEMA public TO :"app_role";
