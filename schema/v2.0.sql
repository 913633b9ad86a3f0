-- vpsAdmin v2.0 database: the tables the node daemon (vpsAdmind 2.0) reads or writes.
--
-- Source: vpsAdmin API db/schema.rb @ 5d85ee934e0f82a76606c692c2204292d6091c92 (the v2.0.0 API commit),
-- schema version 20151213173722, as summarised in the project's reference notes (v2-details.md section 3,
-- vpsadmind-v2-contract.md section 2). Column names, order, types, NULL-ness and defaults follow schema.rb
-- mapped the way Rails 4 + mysql2 creates them (string -> VARCHAR(limit or 255), integer -> INT(11),
-- limit 8 -> BIGINT, boolean -> TINYINT(1), text limit 2147483647 -> LONGTEXT, 16777215 -> MEDIUMTEXT).
-- Index names follow the Rails convention (index_<table>_on_<columns>) except where schema.rb keeps a
-- legacy v1.22 name (t_server, m_id, vps_id, server_location, port_reservation_uniqueness, ...).
--
-- Deliberate deviations from a plain `rake db:schema:load`:
--   * servers_status.server_id is NOT auto-increment: the daemon upserts the row of its own node id
--     (as in a database upgraded from v1.22);
--   * sysconfig.cfg_name is VARCHAR(127) (the v1.22 length; schema.rb does not record it);
--   * everything is InnoDB/utf8mb4 (schema.rb records neither engine nor charset);
--   * members carries only the columns present in schema.rb both before (2015-09) and after (2016-02)
--     v2.0; it exists for tests that need a user row.
-- The sysconfig row db_version (JSON-encoded, i.e. the text `15`) is inserted by
-- vpsadmind.testing.db.create_database, not here. All statements are idempotent (IF NOT EXISTS).

-- ---------------------------------------------------------------------------------------------------
-- Transaction queue
-- ---------------------------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS `transactions` (
  `t_id` INT(11) NOT NULL AUTO_INCREMENT,
  `t_group` INT(11) NULL DEFAULT NULL,
  `t_m_id` INT(11) NULL DEFAULT NULL,
  `t_server` INT(11) NULL DEFAULT NULL,
  `t_vps` INT(11) NULL DEFAULT NULL,
  `t_type` INT(11) NOT NULL,
  `t_depends_on` INT(11) NULL DEFAULT NULL,
  `t_fallback` TEXT NULL,
  `t_urgent` TINYINT(1) NOT NULL DEFAULT 0,
  `t_priority` INT(11) NOT NULL DEFAULT 0,
  `t_success` INT(11) NOT NULL,
  `t_done` INT(11) NOT NULL DEFAULT 0,
  `t_param` LONGTEXT NULL,
  `t_output` TEXT NULL,
  `transaction_chain_id` INT(11) NOT NULL,
  `reversible` INT(11) NOT NULL DEFAULT 1,
  `created_at` DATETIME NULL DEFAULT NULL,
  `started_at` DATETIME NULL DEFAULT NULL,
  `finished_at` DATETIME NULL DEFAULT NULL,
  `queue` VARCHAR(30) NOT NULL DEFAULT 'general',
  PRIMARY KEY (`t_id`),
  KEY `index_transactions_on_t_depends_on` (`t_depends_on`),
  KEY `index_transactions_on_t_done` (`t_done`),
  KEY `t_server` (`t_server`),
  KEY `index_transactions_on_t_success` (`t_success`),
  KEY `index_transactions_on_transaction_chain_id` (`transaction_chain_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `transaction_chains` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `name` VARCHAR(30) NOT NULL,
  `type` VARCHAR(100) NOT NULL,
  `state` INT(11) NOT NULL,
  `size` INT(11) NOT NULL,
  `progress` INT(11) NOT NULL DEFAULT 0,
  `user_id` INT(11) NULL DEFAULT NULL,
  `created_at` DATETIME NULL DEFAULT NULL,
  `updated_at` DATETIME NULL DEFAULT NULL,
  `urgent_rollback` INT(11) NOT NULL DEFAULT 0,
  `concern_type` INT(11) NOT NULL DEFAULT 0,
  `user_session_id` INT(11) NULL DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_transaction_chains_on_state` (`state`),
  KEY `index_transaction_chains_on_user_id` (`user_id`),
  KEY `index_transaction_chains_on_user_session_id` (`user_session_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `transaction_confirmations` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `transaction_id` INT(11) NOT NULL,
  `class_name` VARCHAR(255) NOT NULL,
  `table_name` VARCHAR(255) NOT NULL,
  `row_pks` VARCHAR(255) NOT NULL,
  `attr_changes` TEXT NULL,
  `confirm_type` INT(11) NOT NULL,
  `done` INT(11) NOT NULL DEFAULT 0,
  `created_at` DATETIME NULL DEFAULT NULL,
  `updated_at` DATETIME NULL DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_transaction_confirmations_on_transaction_id` (`transaction_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `transaction_chain_concerns` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `transaction_chain_id` INT(11) NOT NULL,
  `class_name` VARCHAR(255) NOT NULL,
  `row_id` INT(11) NOT NULL,
  PRIMARY KEY (`id`),
  KEY `index_transaction_chain_concerns_on_transaction_chain_id` (`transaction_chain_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `resource_locks` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `resource` VARCHAR(100) NOT NULL,
  `row_id` INT(11) NOT NULL,
  `transaction_chain_id` INT(11) NULL DEFAULT NULL,
  `created_at` DATETIME NULL DEFAULT NULL,
  `updated_at` DATETIME NULL DEFAULT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `index_resource_locks_on_resource_and_row_id` (`resource`, `row_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `port_reservations` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `node_id` INT(11) NOT NULL,
  `addr` VARCHAR(100) NULL DEFAULT NULL,
  `port` INT(11) NOT NULL,
  `transaction_chain_id` INT(11) NULL DEFAULT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `port_reservation_uniqueness` (`node_id`, `port`),
  KEY `index_port_reservations_on_node_id` (`node_id`),
  KEY `index_port_reservations_on_transaction_chain_id` (`transaction_chain_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- ---------------------------------------------------------------------------------------------------
-- Cluster, nodes, configuration
-- ---------------------------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS `servers` (
  `server_id` INT(11) NOT NULL AUTO_INCREMENT,
  `server_name` VARCHAR(64) NOT NULL,
  `server_type` VARCHAR(7) NOT NULL,
  `server_location` INT(11) NOT NULL,
  `server_availstat` TEXT NULL,
  `server_ip4` VARCHAR(127) NOT NULL,
  `max_vps` INT(11) NULL DEFAULT NULL,
  `ve_private` VARCHAR(255) NULL DEFAULT '/vz/private/%{veid}/private',
  `fstype` VARCHAR(10) NOT NULL DEFAULT 'zfs',
  `net_interface` VARCHAR(50) NULL DEFAULT NULL,
  `max_tx` BIGINT NOT NULL DEFAULT 235929600,
  `max_rx` BIGINT NOT NULL DEFAULT 235929600,
  `maintenance_lock` INT(11) NOT NULL DEFAULT 0,
  `maintenance_lock_reason` VARCHAR(255) NULL DEFAULT NULL,
  `environment_id` INT(11) NOT NULL,
  PRIMARY KEY (`server_id`),
  KEY `server_location` (`server_location`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `servers_status` (
  `server_id` INT(11) NOT NULL,
  `ram_free_mb` INT(11) NULL DEFAULT NULL,
  `disk_vz_free_gb` FLOAT NULL DEFAULT NULL,
  `cpu_load` FLOAT NULL DEFAULT NULL,
  `daemon` TINYINT(1) NOT NULL,
  `vpsadmin_version` VARCHAR(63) NULL DEFAULT NULL,
  `kernel` VARCHAR(50) NOT NULL,
  `created_at` DATETIME NOT NULL,
  PRIMARY KEY (`server_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `sysconfig` (
  `cfg_name` VARCHAR(127) NOT NULL,
  `cfg_value` TEXT NULL,
  PRIMARY KEY (`cfg_name`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `node_pubkey` (
  `node_id` INT(11) NOT NULL,
  `type` VARCHAR(3) NOT NULL,
  `key` TEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `members` (
  `m_id` INT(11) NOT NULL AUTO_INCREMENT,
  `m_info` TEXT NULL,
  `m_level` INT(11) NOT NULL,
  `m_nick` VARCHAR(63) NOT NULL,
  `m_name` VARCHAR(255) NULL DEFAULT NULL,
  `m_pass` VARCHAR(255) NOT NULL,
  `m_mail` VARCHAR(127) NULL DEFAULT NULL,
  `m_address` TEXT NULL,
  `m_lang` VARCHAR(16) NULL DEFAULT NULL,
  `m_monthly_payment` INT(11) NOT NULL DEFAULT 300,
  `m_mailer_enable` TINYINT(1) NOT NULL DEFAULT 1,
  `login_count` INT(11) NOT NULL DEFAULT 0,
  `failed_login_count` INT(11) NOT NULL DEFAULT 0,
  `last_request_at` DATETIME NULL DEFAULT NULL,
  `current_login_at` DATETIME NULL DEFAULT NULL,
  `last_login_at` DATETIME NULL DEFAULT NULL,
  `current_login_ip` VARCHAR(255) NULL DEFAULT NULL,
  `last_login_ip` VARCHAR(255) NULL DEFAULT NULL,
  `created_at` DATETIME NULL DEFAULT NULL,
  `updated_at` DATETIME NULL DEFAULT NULL,
  `object_state` INT(11) NOT NULL,
  `expiration_date` DATETIME NULL DEFAULT NULL,
  `password_version` INT(11) NOT NULL DEFAULT 1,
  `paid_until` DATETIME NULL DEFAULT NULL,
  `last_activity_at` DATETIME NULL DEFAULT NULL,
  PRIMARY KEY (`m_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `mail_logs` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `user_id` INT(11) NULL DEFAULT NULL,
  `to` VARCHAR(500) NOT NULL,
  `cc` VARCHAR(500) NOT NULL,
  `bcc` VARCHAR(500) NOT NULL,
  `from` VARCHAR(255) NOT NULL,
  `reply_to` VARCHAR(255) NULL DEFAULT NULL,
  `return_path` VARCHAR(255) NULL DEFAULT NULL,
  `message_id` VARCHAR(255) NULL DEFAULT NULL,
  `in_reply_to` VARCHAR(255) NULL DEFAULT NULL,
  `references` VARCHAR(255) NULL DEFAULT NULL,
  `subject` VARCHAR(255) NOT NULL,
  `text_plain` LONGTEXT NULL,
  `text_html` LONGTEXT NULL,
  `mail_template_id` INT(11) NULL DEFAULT NULL,
  `transaction_id` INT(11) NULL DEFAULT NULL,
  `created_at` DATETIME NULL DEFAULT NULL,
  `updated_at` DATETIME NULL DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_mail_logs_on_user_id` (`user_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- ---------------------------------------------------------------------------------------------------
-- VPS
-- ---------------------------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS `vps` (
  `vps_id` INT(11) NOT NULL AUTO_INCREMENT,
  `m_id` INT(11) NOT NULL,
  `vps_hostname` VARCHAR(255) NULL DEFAULT 'vps',
  `vps_template` INT(11) NOT NULL DEFAULT 1,
  `vps_info` MEDIUMTEXT NULL,
  `dns_resolver_id` INT(11) NULL DEFAULT NULL,
  `vps_server` INT(11) NOT NULL,
  `vps_onboot` TINYINT(1) NOT NULL DEFAULT 1,
  `vps_onstartall` TINYINT(1) NOT NULL DEFAULT 1,
  `vps_config` TEXT NOT NULL,
  `confirmed` INT(11) NOT NULL DEFAULT 0,
  `dataset_in_pool_id` INT(11) NULL DEFAULT NULL,
  `maintenance_lock` INT(11) NOT NULL DEFAULT 0,
  `maintenance_lock_reason` VARCHAR(255) NULL DEFAULT NULL,
  `object_state` INT(11) NOT NULL,
  `expiration_date` DATETIME NULL DEFAULT NULL,
  `created_at` DATETIME NULL DEFAULT NULL,
  `updated_at` DATETIME NULL DEFAULT NULL,
  PRIMARY KEY (`vps_id`),
  KEY `index_vps_on_m_id` (`m_id`),
  KEY `m_id` (`m_id`),
  KEY `index_vps_on_vps_server` (`vps_server`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `vps_status` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `vps_id` INT(11) NOT NULL,
  `vps_up` TINYINT(1) NULL DEFAULT NULL,
  `vps_nproc` INT(11) NULL DEFAULT NULL,
  `vps_vm_used_mb` INT(11) NULL DEFAULT NULL,
  `vps_disk_used_mb` INT(11) NULL DEFAULT NULL,
  `vps_admin_ver` VARCHAR(63) NULL DEFAULT 'not set',
  `created_at` DATETIME NOT NULL,
  PRIMARY KEY (`id`),
  KEY `index_vps_status_on_vps_id` (`vps_id`),
  UNIQUE KEY `vps_id` (`vps_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `vps_ip` (
  `ip_id` INT(11) NOT NULL AUTO_INCREMENT,
  `vps_id` INT(11) NULL DEFAULT NULL,
  `ip_v` INT(11) NOT NULL DEFAULT 4,
  `ip_location` INT(11) NOT NULL,
  `ip_addr` VARCHAR(40) NOT NULL,
  `max_tx` BIGINT NOT NULL DEFAULT 39321600,
  `max_rx` BIGINT NOT NULL DEFAULT 39321600,
  `class_id` INT(11) NOT NULL,
  `user_id` INT(11) NULL DEFAULT NULL,
  PRIMARY KEY (`ip_id`),
  UNIQUE KEY `index_vps_ip_on_class_id` (`class_id`),
  KEY `index_vps_ip_on_ip_location` (`ip_location`),
  KEY `index_vps_ip_on_user_id` (`user_id`),
  KEY `index_vps_ip_on_vps_id` (`vps_id`),
  KEY `vps_id` (`vps_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `vps_features` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `vps_id` INT(11) NOT NULL,
  `name` VARCHAR(255) NOT NULL,
  `enabled` TINYINT(1) NOT NULL,
  `updated_at` DATETIME NULL DEFAULT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `index_vps_features_on_vps_id_and_name` (`vps_id`, `name`),
  KEY `index_vps_features_on_vps_id` (`vps_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `vps_has_config` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `vps_id` INT(11) NOT NULL,
  `config_id` INT(11) NOT NULL,
  `order` INT(11) NOT NULL,
  `confirmed` INT(11) NOT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `index_vps_has_config_on_vps_id_and_config_id_and_confirmed` (`vps_id`, `config_id`, `confirmed`),
  KEY `index_vps_has_config_on_vps_id` (`vps_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `mounts` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `vps_id` INT(11) NOT NULL,
  `src` VARCHAR(500) NULL DEFAULT NULL,
  `dst` VARCHAR(500) NOT NULL,
  `mount_opts` VARCHAR(255) NOT NULL,
  `umount_opts` VARCHAR(255) NOT NULL,
  `mount_type` VARCHAR(10) NOT NULL,
  `user_editable` TINYINT(1) NOT NULL DEFAULT 1,
  `dataset_in_pool_id` INT(11) NULL DEFAULT NULL,
  `snapshot_in_pool_id` INT(11) NULL DEFAULT NULL,
  `mode` VARCHAR(2) NOT NULL,
  `confirmed` INT(11) NOT NULL DEFAULT 0,
  `object_state` INT(11) NOT NULL,
  `expiration_date` DATETIME NULL DEFAULT NULL,
  `created_at` DATETIME NULL DEFAULT NULL,
  `updated_at` DATETIME NULL DEFAULT NULL,
  `on_start_fail` INT(11) NOT NULL DEFAULT 1,
  `enabled` TINYINT(1) NOT NULL DEFAULT 1,
  `master_enabled` TINYINT(1) NOT NULL DEFAULT 1,
  `current_state` INT(11) NOT NULL DEFAULT 0,
  PRIMARY KEY (`id`),
  KEY `index_mounts_on_vps_id` (`vps_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- ---------------------------------------------------------------------------------------------------
-- Storage
-- ---------------------------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS `pools` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `node_id` INT(11) NOT NULL,
  `label` VARCHAR(500) NOT NULL,
  `filesystem` VARCHAR(500) NOT NULL,
  `role` INT(11) NOT NULL,
  `refquota_check` TINYINT(1) NOT NULL DEFAULT 0,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `datasets` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `name` VARCHAR(255) NOT NULL,
  `full_name` VARCHAR(1000) NOT NULL,
  `user_id` INT(11) NULL DEFAULT NULL,
  `user_editable` TINYINT(1) NOT NULL,
  `user_create` TINYINT(1) NOT NULL,
  `user_destroy` TINYINT(1) NOT NULL,
  `ancestry` VARCHAR(255) NULL DEFAULT NULL,
  `ancestry_depth` INT(11) NOT NULL DEFAULT 0,
  `expiration` DATETIME NULL DEFAULT NULL,
  `confirmed` INT(11) NOT NULL DEFAULT 0,
  `object_state` INT(11) NOT NULL,
  `expiration_date` DATETIME NULL DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_datasets_on_ancestry` (`ancestry`),
  KEY `index_datasets_on_user_id` (`user_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `dataset_in_pools` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `dataset_id` INT(11) NOT NULL,
  `pool_id` INT(11) NOT NULL,
  `label` VARCHAR(100) NULL DEFAULT NULL,
  `used` INT(11) NOT NULL DEFAULT 0,
  `avail` INT(11) NOT NULL DEFAULT 0,
  `min_snapshots` INT(11) NOT NULL DEFAULT 14,
  `max_snapshots` INT(11) NOT NULL DEFAULT 20,
  `snapshot_max_age` INT(11) NOT NULL DEFAULT 1209600,
  `mountpoint` VARCHAR(500) NULL DEFAULT NULL,
  `confirmed` INT(11) NOT NULL DEFAULT 0,
  PRIMARY KEY (`id`),
  UNIQUE KEY `index_dataset_in_pools_on_dataset_id_and_pool_id` (`dataset_id`, `pool_id`),
  KEY `index_dataset_in_pools_on_dataset_id` (`dataset_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `dataset_properties` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `pool_id` INT(11) NULL DEFAULT NULL,
  `dataset_id` INT(11) NULL DEFAULT NULL,
  `dataset_in_pool_id` INT(11) NULL DEFAULT NULL,
  `ancestry` VARCHAR(255) NULL DEFAULT NULL,
  `ancestry_depth` INT(11) NOT NULL DEFAULT 0,
  `name` VARCHAR(30) NOT NULL,
  `value` VARCHAR(255) NULL DEFAULT NULL,
  `inherited` TINYINT(1) NOT NULL DEFAULT 1,
  `confirmed` INT(11) NOT NULL DEFAULT 0,
  `created_at` DATETIME NULL DEFAULT NULL,
  `updated_at` DATETIME NULL DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_dataset_properties_on_dataset_id` (`dataset_id`),
  KEY `index_dataset_properties_on_dataset_in_pool_id_and_name` (`dataset_in_pool_id`, `name`),
  KEY `index_dataset_properties_on_dataset_in_pool_id` (`dataset_in_pool_id`),
  KEY `index_dataset_properties_on_pool_id` (`pool_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `dataset_trees` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `dataset_in_pool_id` INT(11) NOT NULL,
  `index` INT(11) NOT NULL DEFAULT 0,
  `head` TINYINT(1) NOT NULL DEFAULT 0,
  `confirmed` INT(11) NOT NULL DEFAULT 0,
  `created_at` DATETIME NULL DEFAULT NULL,
  `updated_at` DATETIME NULL DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_dataset_trees_on_dataset_in_pool_id` (`dataset_in_pool_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `branches` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `dataset_tree_id` INT(11) NOT NULL,
  `name` VARCHAR(255) NOT NULL,
  `index` INT(11) NOT NULL DEFAULT 0,
  `head` TINYINT(1) NOT NULL DEFAULT 0,
  `confirmed` INT(11) NOT NULL DEFAULT 0,
  `created_at` DATETIME NULL DEFAULT NULL,
  `updated_at` DATETIME NULL DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_branches_on_dataset_tree_id` (`dataset_tree_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `snapshots` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `name` VARCHAR(255) NOT NULL,
  `dataset_id` INT(11) NOT NULL,
  `confirmed` INT(11) NOT NULL DEFAULT 0,
  `created_at` DATETIME NULL DEFAULT NULL,
  `updated_at` DATETIME NULL DEFAULT NULL,
  `snapshot_download_id` INT(11) NULL DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_snapshots_on_dataset_id` (`dataset_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `snapshot_in_pools` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `snapshot_id` INT(11) NOT NULL,
  `dataset_in_pool_id` INT(11) NOT NULL,
  `reference_count` INT(11) NOT NULL DEFAULT 0,
  `mount_id` INT(11) NULL DEFAULT NULL,
  `confirmed` INT(11) NOT NULL DEFAULT 0,
  PRIMARY KEY (`id`),
  KEY `index_snapshot_in_pools_on_dataset_in_pool_id` (`dataset_in_pool_id`),
  UNIQUE KEY `index_snapshot_in_pools_on_snapshot_id_and_dataset_in_pool_id` (`snapshot_id`, `dataset_in_pool_id`),
  KEY `index_snapshot_in_pools_on_snapshot_id` (`snapshot_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `snapshot_in_pool_in_branches` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `snapshot_in_pool_id` INT(11) NOT NULL,
  `snapshot_in_pool_in_branch_id` INT(11) NULL DEFAULT NULL,
  `branch_id` INT(11) NOT NULL,
  `confirmed` INT(11) NOT NULL DEFAULT 0,
  PRIMARY KEY (`id`),
  UNIQUE KEY `unique_snapshot_in_pool_in_branches` (`snapshot_in_pool_id`, `branch_id`),
  KEY `index_snapshot_in_pool_in_branches_on_snapshot_in_pool_id` (`snapshot_in_pool_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `snapshot_downloads` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `user_id` INT(11) NOT NULL,
  `snapshot_id` INT(11) NULL DEFAULT NULL,
  `pool_id` INT(11) NOT NULL,
  `secret_key` VARCHAR(100) NOT NULL,
  `file_name` VARCHAR(255) NOT NULL,
  `confirmed` INT(11) NOT NULL DEFAULT 0,
  `created_at` DATETIME NULL DEFAULT NULL,
  `updated_at` DATETIME NULL DEFAULT NULL,
  `object_state` INT(11) NOT NULL,
  `expiration_date` DATETIME NULL DEFAULT NULL,
  `size` INT(11) NULL DEFAULT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `index_snapshot_downloads_on_secret_key` (`secret_key`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- ---------------------------------------------------------------------------------------------------
-- Integrity checks
-- ---------------------------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS `integrity_checks` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `user_id` INT(11) NULL DEFAULT NULL,
  `status` INT(11) NOT NULL DEFAULT 0,
  `checked_objects` INT(11) NOT NULL DEFAULT 0,
  `integral_objects` INT(11) NOT NULL DEFAULT 0,
  `broken_objects` INT(11) NOT NULL DEFAULT 0,
  `checked_facts` INT(11) NOT NULL DEFAULT 0,
  `true_facts` INT(11) NOT NULL DEFAULT 0,
  `false_facts` INT(11) NOT NULL DEFAULT 0,
  `created_at` DATETIME NULL DEFAULT NULL,
  `updated_at` DATETIME NULL DEFAULT NULL,
  `finished_at` DATETIME NULL DEFAULT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `integrity_objects` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `integrity_check_id` INT(11) NOT NULL,
  `node_id` INT(11) NOT NULL,
  `class_name` VARCHAR(100) NOT NULL,
  `row_id` INT(11) NULL DEFAULT NULL,
  `ancestry` VARCHAR(255) NULL DEFAULT NULL,
  `ancestry_depth` INT(11) NOT NULL DEFAULT 0,
  `status` INT(11) NOT NULL DEFAULT 0,
  `checked_facts` INT(11) NOT NULL DEFAULT 0,
  `true_facts` INT(11) NOT NULL DEFAULT 0,
  `false_facts` INT(11) NOT NULL DEFAULT 0,
  `created_at` DATETIME NULL DEFAULT NULL,
  `updated_at` DATETIME NULL DEFAULT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `integrity_facts` (
  `id` INT(11) NOT NULL AUTO_INCREMENT,
  `integrity_object_id` INT(11) NOT NULL,
  `name` VARCHAR(30) NOT NULL,
  `expected_value` VARCHAR(255) NOT NULL,
  `actual_value` VARCHAR(255) NOT NULL,
  `status` INT(11) NOT NULL DEFAULT 0,
  `severity` INT(11) NOT NULL DEFAULT 1,
  `message` VARCHAR(1000) NULL DEFAULT NULL,
  `created_at` DATETIME NULL DEFAULT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- ---------------------------------------------------------------------------------------------------
-- Traffic accounting (no surrogate id: schema.rb says id: false)
-- ---------------------------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS `transfered` (
  `tr_ip` VARCHAR(127) NOT NULL,
  `tr_proto` VARCHAR(4) NOT NULL,
  `tr_packets_in` BIGINT NOT NULL DEFAULT 0,
  `tr_packets_out` BIGINT NOT NULL DEFAULT 0,
  `tr_bytes_in` BIGINT NOT NULL DEFAULT 0,
  `tr_bytes_out` BIGINT NOT NULL DEFAULT 0,
  `tr_date` DATETIME NOT NULL,
  KEY `index_transfered_on_tr_ip_and_tr_date` (`tr_ip`, `tr_date`),
  KEY `index_transfered_on_tr_ip` (`tr_ip`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `transfered_recent` (
  `tr_ip` VARCHAR(127) NOT NULL,
  `tr_proto` VARCHAR(5) NOT NULL,
  `tr_packets_in` BIGINT NOT NULL DEFAULT 0,
  `tr_packets_out` BIGINT NOT NULL DEFAULT 0,
  `tr_bytes_in` BIGINT NOT NULL DEFAULT 0,
  `tr_bytes_out` BIGINT NOT NULL DEFAULT 0,
  `tr_date` DATETIME NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
